using System.Collections.Concurrent;
using System.Diagnostics;
using System.Formats.Tar;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Dingo.Backups;
using Dingo.Config;
using Dingo.Model;
using Dingo.Postgres;
using Docker.DotNet;
using Docker.DotNet.Models;
using Microsoft.Extensions.Logging;

namespace Dingo.Cells;

/// <param name="CellId">Containers and volumes carry this cell's id as a label: a cell lists and adopts only its own.</param>
/// <param name="Docker">Endpoint, image, user and labels (`dingo.cell.docker`).</param>
public sealed record DockerRuntimeOptions(string CellId, DockerSettings Docker)
{
    /// <summary>Memory and CPU ceilings of an instance's nodes (from its plan); read when a container is made.</summary>
    public Func<string, CancellationToken, Task<NodeLimits>> LimitsOf { get; init; } = (_, _) => Task.FromResult(NodeLimits.Default);

    /// <summary>
    /// A node container's log (PostgreSQL's output) is kept by the engine up to this size, then rolled
    /// (<c>dingo.logging.postgres-log-max</c>, as a process cell's postgres.log).
    /// </summary>
    public long LogMaxBytes { get; init; } = 10L * 1024 * 1024;

    /// <summary>Upper bound for initdb, pg_basebackup and pg_rewind (a base backup of a large node takes a while).</summary>
    public TimeSpan ToolTimeout { get; init; } = TimeSpan.FromMinutes(30);

    /// <summary>Deadline of one quick engine call (inspect, create, start, upload).</summary>
    public TimeSpan CallTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Deadline of a node's inspect for its HA pass: the HA loop must not wait longer than this on a hung engine.</summary>
    public TimeSpan ListTimeout { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>
    /// Deadline of the cell's whole listing (its reconcile pass, readiness): no HA pass waits on it. podman lists under
    /// every container's lock, so while containers are being started a listing takes seconds, and at 2 s a busy engine
    /// was called unreachable: the cell reported a problem and took no new node for a moment (13 log lines of it over
    /// three cells in one burst of 20 provisions, bench/Provision).
    /// </summary>
    public TimeSpan ListingTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// How long a node inspected without a container (its data not made yet: a replica waiting for its leader or for the
    /// cell's clone turn; or nothing of it on the engine) is taken as such again without asking, while this runtime has
    /// not touched it since (<see cref="NodeLocks.Version"/>): only the runtime makes a node's container, under the
    /// node's lock. Its HA pass asked every second, each time four calls into the engine (the container, its previous
    /// name, the volume, the node's tool containers): in bench/Provision's Docker burst 568 such passes in 81 s, and
    /// 1504 container inspects in all. What someone else does on the engine is seen this much later at most.
    /// </summary>
    public TimeSpan AbsentReuse { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>One engine listing serves the cell's callers for this long.</summary>
    public TimeSpan ListCacheTtl { get; init; } = TimeSpan.FromMilliseconds(250);

    /// <summary>How long a started container may take to listen on its port.</summary>
    public TimeSpan StartTimeout { get; init; } = TimeSpan.FromSeconds(20);

    public int MaxConnections { get; init; } = 100;

    /// <summary>
    /// How many initialised, never-started data volumes the runtime keeps ready (`dingo.cell.warm-pool`): a new
    /// cluster's first node takes one instead of running initdb in a tool container (see <see cref="DockerRuntime"/>'s
    /// warm pool).
    /// </summary>
    public int WarmPool { get; init; }
    /// <summary>dingo.cell.saturated-cpu-pressure: work that can wait also waits while the host's CPU pressure is this high (0: off).</summary>
    public double SaturatedCpuPressure { get; init; }
}

/// <summary>
/// Runs each PostgreSQL node as one container through the Docker Engine API (Docker, or podman's compatible service),
/// with the same semantics as <see cref="LocalProcessRuntime"/>:
/// <list type="bullet">
/// <item>a named volume per node (<c>dingo-&lt;node&gt;</c>) holds the data directory; containers come and go, the
/// volume stays until <see cref="RemoveAsync"/>; Dingo's settings are written into the container at every start;</item>
/// <item>the node container (<c>dingo-&lt;node&gt;</c>) exists only once the data directory is complete (initdb or a base
/// backup finished): its existence is the "initialised" marker, as the marker file is for local processes;</item>
/// <item>initdb, pg_basebackup and pg_rewind run in one-shot containers of the same image on the same volume, never
/// beside a running PostgreSQL; secrets reach them as 0600 files uploaded into the tool's container, never as
/// arguments or environment, and go with that container when the tool ends;</item>
/// <item>containers and volumes are labelled (platform, cell, instance, node), so a restarted cell finds and adopts its
/// running containers instead of recreating them;</item>
/// <item>host networking: PostgreSQL listens on the cell's address and the node's port, as a local process would.</item>
/// </list>
/// No engine restart policy: a container that dies is started again by the node's HA loop, which first decides whether
/// it may come back as a primary (an engine restarting a dead primary behind the HA loop's back could make two).
/// </summary>
public sealed class DockerRuntime : IContainerRuntime, IDisposable
{
    public const string DataMount = "/var/lib/postgresql/data";
    private const string PgData = DataMount + "/pgdata";
    // Dingo's settings and secrets live in the container's own file system, not in the volume: they are written
    // again at every start, and the archive API reaches a container's file system whether it runs or not (a volume of
    // a stopped container it may not reach, e.g. a bind-backed one under podman).
    private const string SettingsDir = "/etc/dingo";

    public const string PlatformLabel = "dingo.platform";
    public const string CellLabel = "dingo.cell";
    public const string InstanceLabel = "dingo.instance";
    public const string NodeLabel = "dingo.node";
    public const string KindLabel = "dingo.kind";
    private const string MemoryLabel = "dingo.memory";
    private const string CpusLabel = "dingo.cpus";
    /// <summary>The volume a container mounts when it is not the node's own <c>dingo-&lt;node&gt;</c> (a warm pool entry's).</summary>
    internal const string VolumeLabel = "dingo.volume";
    /// <summary>On a node container taken from the warm pool: its first start gives the superuser the instance's password.</summary>
    private const string ClaimLabel = "dingo.claim";
    internal const string ImageLabel = "dingo.image";

    // The node container's command: standby.signal follows the role Dingo wrote, then PostgreSQL replaces the shell
    // (PID 1, so `docker stop` signals it directly and a postmaster.pid left by a killed container is known stale).
    // A node taken from the warm pool gets the instance's password at its first start, one of two ways (see the warm
    // pool below): over a session the cell opens with the entry's own password once PostgreSQL listens, or, when the
    // cell no longer knows that password, from /etc/dingo/claim.sql in single-user mode (no listener, no authentication)
    // before PostgreSQL ever listens. Either way dingo-claimed in the volume says it was done; claim.sql is uploaded
    // again with the settings of every later start, and the step runs only while that marker is missing.
    private const string NodeScript = """
        set -e
        D=/var/lib/postgresql/data
        if [ -f /etc/dingo/claim.sql ]; then
          if [ ! -f "$D/dingo-claimed" ]; then
            out=$(postgres --single -D "$D/pgdata" -c log_min_error_statement=panic -c log_statement=none postgres < /etc/dingo/claim.sql 2>&1) || { echo "dingo: the warm data could not take the instance's password: $out" >&2; exit 1; }
            case "$out" in *ERROR*|*FATAL*) echo "dingo: the warm data could not take the instance's password: $out" >&2; exit 1;; esac
            : > "$D/dingo-claimed"
          fi
          rm -f /etc/dingo/claim.sql
        fi
        role=
        if [ -f /etc/dingo/role ]; then read -r role < /etc/dingo/role || true; fi
        if [ "$role" = standby ]; then : > "$D/pgdata/standby.signal"; else rm -f "$D/pgdata/standby.signal"; fi
        exec postgres -D "$D/pgdata" -c config_file=/etc/dingo/postgresql.conf
        """;

    private const string InitdbScript = """
        set -e
        D=/var/lib/postgresql/data
        trap 'rm -f /etc/dingo/.pwfile' EXIT
        rm -rf "$D/pgdata"
        init() {
          initdb -D "$D/pgdata" -U "$DINGO_SUPERUSER" --pwfile=/etc/dingo/.pwfile --auth-local=scram-sha-256 \
            --auth-host=scram-sha-256 --data-checksums --no-sync -E UTF8 --locale="$1"
        }
        # C.UTF-8 where the image has it, else C; any other failure is reported as it is.
        if ! init C.UTF-8 > /tmp/initdb.out 2>&1; then
          cat /tmp/initdb.out >&2
          grep -q 'invalid locale name' /tmp/initdb.out || exit 1
          echo "dingo: locale C.UTF-8 is not in the image; initialising with C" >&2
          rm -rf "$D/pgdata"
          init C
        fi
        # The application database (every instance's is the record's default, dingo), made here where it costs a provision
        # nothing: the first primary's preparation made it before, and its CREATE DATABASE (template1 copied through the
        # WAL) was that step's slowest statement on a saturated machine (bench/Provision's Docker burst). Then the WAL
        # moves on to a new segment: a new primary's archiver starts at the segment it writes in, and initdb's and this
        # statement's 11.5 MB of WAL (of no use to any restore: none comes before the first base backup) stay behind.
        out=$(printf 'CREATE DATABASE dingo\nSELECT pg_switch_wal()\n' | postgres --single -D "$D/pgdata" -c log_min_error_statement=panic -c log_statement=none postgres 2>&1) \
          || { echo "dingo: creating the application database failed: $out" >&2; exit 1; }
        case "$out" in *ERROR*|*FATAL*) echo "dingo: creating the application database failed: $out" >&2; exit 1;; esac
        # initdb ran with --no-sync: one flush of the volume's file system instead of an fsync per file.
        sync -f "$D/pgdata"
        """;

    // Connection details come from PGHOST/PGPORT/PGUSER/PGPASSFILE: nothing is spliced into the script.
    private const string CloneScript = """
        set -e
        D=/var/lib/postgresql/data
        trap 'rm -f /etc/dingo/.source.pgpass' EXIT
        rm -rf "$D/pgdata"
        pg_basebackup -D "$D/pgdata" -X stream -c fast -w --no-sync
        if [ -f "$D/pgdata/postgresql.auto.conf" ]; then
          sed -i -e '/^[[:space:]]*primary_conninfo/d' -e '/^[[:space:]]*primary_slot_name/d' "$D/pgdata/postgresql.auto.conf"
        fi
        """;

    // pg_rewind finishes crash recovery itself (single-user mode) when the node was not shut down cleanly.
    private const string RewindScript = """
        set -e
        D=/var/lib/postgresql/data
        trap 'rm -f /etc/dingo/.source.pgpass' EXIT
        pg_rewind -D "$D/pgdata" --source-server="dbname=postgres"
        if [ -f "$D/pgdata/postgresql.auto.conf" ]; then
          sed -i -e '/^[[:space:]]*primary_conninfo/d' -e '/^[[:space:]]*primary_slot_name/d' "$D/pgdata/postgresql.auto.conf"
        fi
        """;

    private readonly DockerRuntimeOptions _options;
    private readonly DockerSettings _docker;
    private readonly DockerClient _client;
    private readonly ILogger _logger;
    private readonly (int Uid, int Gid) _user;
    private readonly NodeLocks _nodeLocks = new();
    private readonly SemaphoreSlim _listGate = new(1, 1);
    private readonly ConcurrentDictionary<string, string> _stoppedDetails = new(StringComparer.Ordinal);
    private long _generation;
    private Listing? _listing;
    private Listing? _lastGood;
    private string? _engineProblem;
    private DateTime _imageCheckedAt = DateTime.MinValue;
    private readonly NodeAccess _access = new();

    public DockerRuntime(DockerRuntimeOptions options, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Docker.Validate();
        _options = options;
        _work = new NodeWork(CpuPressure.Some10, options.SaturatedCpuPressure);
        _docker = options.Docker;
        _logger = logger;
        _user = _docker.UserIds();
        _client = DockerEngine.Connect(_docker);
        if (_docker.StartCpus > 0) _allowance = new StartAllowance(_docker.StartCpusFor, SetCpuCeilingAsync, RunningSinceAsync, logger);
    }

    private readonly StartAllowance? _allowance;
    private HttpClient? _http;
    /// <summary>Whether the engine's Docker-compatible update sets a container's CPUs (null: not tried yet; podman 4.3's answers 404).</summary>
    private bool? _compatUpdate;

    /// <summary>Starts whose CPU ceiling is still to set after their allowance (tests).</summary>
    internal int StartAllowancesPending => _allowance?.Pending ?? 0;

    private double MadeCpus(NodeLimits limits) => MadeCpus(limits, _docker.StartCpus);

    /// <summary>A node container's CPUs as made: its plan's, or the start allowance when that is more (docs/docker.md); 0: no allowance.</summary>
    internal static double MadeCpus(NodeLimits limits, double startCpus) => startCpus <= 0 ? limits.Cpus : Math.Max(limits.Cpus, startCpus);

    /// <summary>A look at a node container: a running one above its plan's ceiling is brought down once its start allowance passed.</summary>
    private void ObserveStart(ContainerInspectResponse c)
    {
        if (_allowance is null || !c.State.Running || Label(c.Config.Labels, KindLabel) != "node") return;
        if (!double.TryParse(Label(c.Config.Labels, CpusLabel), NumberStyles.Float, CultureInfo.InvariantCulture, out var ceiling)) return;
        _allowance.Observe(Label(c.Config.Labels, NodeLabel) ?? c.Name, c.ID, c.State.StartedAt, ceiling, c.HostConfig.NanoCPUs / 1e9);
    }

    /// <summary>
    /// Sets a running container's CPU ceiling: the Docker API's update where the engine has it (Docker's keeps it in the
    /// container's configuration too), else podman's own (libpod's: the running container's cgroup only; its inspect goes on
    /// showing the CPUs it was made with).
    /// </summary>
    private async Task SetCpuCeilingAsync(string containerId, double cpus, CancellationToken ct)
    {
        if (_compatUpdate != false)
        {
            try
            {
                await CallAsync("set the container's CPUs", t => _client.Containers.UpdateContainerAsync(containerId,
                    new ContainerUpdateParameters { NanoCPUs = (long)(cpus * 1_000_000_000) }, t), ct).ConfigureAwait(false);
                _compatUpdate = true;
                return;
            }
            catch (DockerApiException ex) when (DockerEngine.IsNotFound(ex) && _compatUpdate is null && !DockerEngine.Said(ex).Contains("container", StringComparison.OrdinalIgnoreCase))
            {
                _compatUpdate = false; // no such endpoint (podman 4.3): its own API below
            }
        }
        var period = 100_000L;
        var quota = (long)Math.Round(cpus * period);
        using var body = new StringContent(
            System.Text.Json.JsonSerializer.Serialize(new { cpu = new { quota, period } }), Encoding.UTF8, "application/json");
        var (status, said) = await LibpodPostAsync("set the container's CPUs", containerId, "update", body, ct).ConfigureAwait(false);
        if ((int)status is < 200 or > 299)
            throw new ContainerEngineException($"container engine at {_docker.Endpoint} failed to set the container's CPUs: HTTP {(int)status} {said}");
    }

    /// <summary>
    /// A call of podman's own API on a container (<c>POST /libpod/containers/{id}/{action}</c>) through <see cref="CallAsync"/>
    /// (its deadline, slow-call log and unreachable error): the status and the answer's body, trimmed.
    /// </summary>
    private Task<(HttpStatusCode Status, string Said)> LibpodPostAsync(string what, string containerId, string action, HttpContent? body,
        CancellationToken ct, TimeSpan? timeout = null)
    {
        var http = Http();
        return CallAsync(what, async t =>
        {
            using var response = await http.PostAsync($"v4.0.0/libpod/containers/{Uri.EscapeDataString(containerId)}/{action}", body, t).ConfigureAwait(false);
            return (response.StatusCode, (await response.Content.ReadAsStringAsync(t).ConfigureAwait(false)).Trim());
        }, ct, timeout);
    }

    /// <summary>Whether the engine has libpod's wait (podman's own API; null: not tried yet; Docker has none).</summary>
    private bool? _libpodWait;

    /// <summary>Tool containers are waited for through libpod's wait (tests).</summary>
    internal bool WaitsThroughLibpod => _libpodWait == true;

    /// <summary>How often podman looks at a waited-for container (libpod's wait; its own default is 250 ms).</summary>
    internal static readonly TimeSpan LibpodWaitInterval = TimeSpan.FromMilliseconds(50);

    /// <summary>
    /// Waits for a started tool container to exit; its exit code. On podman through libpod's wait, which looks every
    /// <see cref="LibpodWaitInterval"/>: podman 4.3's Docker-compatible wait looks in a loop without pause (podman issue
    /// 18150, fixed in 4.5) and kept the engine at one to two full cores for as long as an initdb, a clone or a restore ran —
    /// 4.6 core-seconds for a 3-second wait on this machine, against 0.06 with libpod's. Docker's own wait (an event, no
    /// polling) where the engine has no libpod API.
    /// </summary>
    internal async Task<long> WaitExitAsync(string containerId, string what, CancellationToken ct)
    {
        if (_libpodWait != false)
        {
            var (status, said) = await LibpodPostAsync(what, containerId, $"wait?interval={(int)LibpodWaitInterval.TotalMilliseconds}ms", null, ct,
                _options.ToolTimeout).ConfigureAwait(false);
            if (status == HttpStatusCode.OK && long.TryParse(said, NumberStyles.Integer, CultureInfo.InvariantCulture, out var code))
            {
                _libpodWait = true;
                return code;
            }
            // podman's own answer for a container that is not there (or any failure of an engine that has the API).
            if (_libpodWait == true || (status == HttpStatusCode.NotFound && said.Contains("no such container", StringComparison.OrdinalIgnoreCase)) || (int)status >= 500)
                throw new ContainerEngineException($"container engine at {_docker.Endpoint} failed to {what}: HTTP {(int)status} {said}");
            // Docker: no such route (404 "page not found", or 400 for an API version it does not have).
            _libpodWait = false;
        }
        var exit = await CallAsync(what, t => _client.Containers.WaitContainerAsync(containerId, t), ct, _options.ToolTimeout).ConfigureAwait(false);
        return exit.StatusCode;
    }

    /// <summary>The plain HTTP client of the engine's endpoint, made on first use.</summary>
    private HttpClient Http()
    {
        if (Volatile.Read(ref _http) is { } made) return made;
        var fresh = DockerEngine.Http(_docker);
        if (Interlocked.CompareExchange(ref _http, fresh, null) is { } other)
        {
            fresh.Dispose();
            return other;
        }
        return fresh;
    }

    /// <summary>A container's start time while it runs; null when it is gone or stopped.</summary>
    private async Task<string?> RunningSinceAsync(string containerId, CancellationToken ct)
    {
        try
        {
            var c = await CallAsync("inspect the container", t => _client.Containers.InspectContainerAsync(containerId, t), ct).ConfigureAwait(false);
            return c.State.Running ? c.State.StartedAt : null;
        }
        catch (DockerContainerNotFoundException)
        {
            return null;
        }
        catch (DockerApiException ex) when (DockerEngine.IsNotFound(ex))
        {
            return null;
        }
    }

    public string Kind => "docker";

    /// <summary>Why the engine could not be used on the last listing (null when it answered).</summary>
    public string? EngineProblem => Volatile.Read(ref _engineProblem);

    public string? Problem => EngineProblem;

    public static string ContainerName(string nodeId) => "dingo-" + nodeId;
    /// <summary>A node container being replaced (a new image or limits) goes by this name until its successor exists.</summary>
    internal static string PreviousContainerName(string nodeId) => ContainerName(nodeId) + "-old";
    public static string VolumeName(string nodeId) => "dingo-" + nodeId;

    private sealed record Listing(IReadOnlyList<RuntimeNode> Nodes, long Generation, Stopwatch Age, bool Failed);

    // ---- listing ----

    public async Task<IReadOnlyList<RuntimeNode>> ListAsync(CancellationToken cancellationToken)
    {
        if (Fresh(_listing) is { } quick) return quick;
        await _listGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (Fresh(_listing) is { } shared) return shared;
            var generation = Interlocked.Read(ref _generation);
            try
            {
                var nodes = await ListFromEngineAsync(cancellationToken).ConfigureAwait(false);
                _listing = _lastGood = new Listing(nodes, generation, Stopwatch.StartNew(), Failed: false);
                if (Interlocked.Exchange(ref _engineProblem, null) is not null)
                    _logger.LogInformation("container engine at {Endpoint} answers again", _docker.Endpoint);
                return nodes;
            }
            catch (ContainerEngineException ex) when (_lastGood is { } last)
            {
                // What ran a moment ago most likely still runs (containers outlive their engine's API): the HA loop
                // goes on probing PostgreSQL itself and keeps its leader lease, instead of stalling on the engine.
                NoteEngineProblem(ex.Message);
                var stale = last.Nodes.Select(n => n with { Detail = $"{n.Detail}, as last seen: {ex.Message}" }).ToList();
                _listing = new Listing(stale, generation, Stopwatch.StartNew(), Failed: true);
                return stale;
            }
            catch (ContainerEngineException ex)
            {
                Volatile.Write(ref _engineProblem, ex.Message);
                throw;
            }
        }
        finally
        {
            _listGate.Release();
        }
    }

    private IReadOnlyList<RuntimeNode>? Fresh(Listing? listing) =>
        listing is not null && listing.Generation == Interlocked.Read(ref _generation)
        && listing.Age.Elapsed < (listing.Failed ? TimeSpan.FromSeconds(1) : _options.ListCacheTtl)
            ? listing.Nodes
            : null;

    /// <summary>
    /// One node, for its HA pass: its container inspected by name, not the cell's whole listing. podman lists containers
    /// under each container's lock, so during a burst of provisions a listing waited for every container being created
    /// or started on the engine (HA passes of 3-6 s, bench/Provision's Docker burst), where one container's inspect waits
    /// only for that container. An engine that does not answer within the listing's deadline gives the node's last seen
    /// state, as the listing does.
    /// </summary>
    public async Task<RuntimeNode?> InspectAsync(string nodeId, CancellationToken cancellationToken)
    {
        NodeIdRule.Check(nodeId);
        var version = _nodeLocks.Version(nodeId);
        if (version % 2 == 0 && _absent.TryGetValue(nodeId, out var known) && known.Version == version && Stopwatch.GetElapsedTime(known.At) < _options.AbsentReuse)
            return known.Node;
        try
        {
            var node = await InspectFromEngineAsync(nodeId, cancellationToken).ConfigureAwait(false);
            if (node is null) _lastSeen.TryRemove(nodeId, out _);
            else _lastSeen[nodeId] = node;
            // Only this runtime makes a node's container, under the node's lock: while nobody took the lock, a node seen
            // without one still has none.
            if (node is null or { Initialised: false } && version % 2 == 0 && _nodeLocks.Version(nodeId) == version)
                _absent[nodeId] = (node, version, Stopwatch.GetTimestamp());
            else
                _absent.TryRemove(nodeId, out _);
            return node;
        }
        catch (ContainerEngineException ex) when (_lastSeen.TryGetValue(nodeId, out var last))
        {
            NoteEngineProblem(ex.Message);
            return last with { Detail = $"{last.Detail}, as last seen: {ex.Message}" };
        }
    }

    private readonly ConcurrentDictionary<string, RuntimeNode> _lastSeen = new(StringComparer.Ordinal);

    /// <summary>The lock every change of a node is made under (tests take it to stand for a change).</summary>
    internal NodeLocks Locks => _nodeLocks;

    private readonly ConcurrentDictionary<string, (RuntimeNode? Node, long Version, long At)> _absent = new(StringComparer.Ordinal);

    /// <summary>The engine failed a call the HA loop made: said once per distinct problem, as nodes carry on as last seen.</summary>
    private void NoteEngineProblem(string problem)
    {
        if (Interlocked.Exchange(ref _engineProblem, problem) != problem)
            _logger.LogWarning("{Problem}; nodes keep their last seen state until it answers", problem);
    }

    /// <summary>A node whose container exists (its data is complete), running or not.</summary>
    private async Task<RuntimeNode> ContainerNodeAsync(string nodeId, string containerId, bool running, string? state, long? exitCode,
        string imageId, string image, string? instanceId, CancellationToken ct)
    {
        var detail = running ? $"running (container {Short(containerId)})" : await StoppedDetailAsync(containerId, state, exitCode, imageId, image, ct).ConfigureAwait(false);
        return new RuntimeNode(nodeId, Initialised: true, running, Pid: null, detail) { InstanceId = instanceId, ContainerId = containerId };
    }

    /// <summary>A node with its volume and no container yet: initdb or a clone still to run, or running in <paramref name="busyTool"/>.</summary>
    private static RuntimeNode Uninitialised(string nodeId, ContainerListResponse? busyTool, string? instanceId) =>
        new(nodeId, Initialised: false, Running: false, Pid: null,
            busyTool is not null ? $"data not initialised ({Label(busyTool.Labels, "dingo.tool") ?? "a tool"} running)" : "data not initialised")
            { InstanceId = instanceId };

    private async Task<RuntimeNode?> InspectFromEngineAsync(string nodeId, CancellationToken ct)
    {
        // A recreation cut short leaves the container under its old name: the data is complete all the same.
        var c = await InspectOursAsync(nodeId, ContainerName(nodeId), ct, _options.ListTimeout).ConfigureAwait(false)
                ?? await InspectOursAsync(nodeId, PreviousContainerName(nodeId), ct, _options.ListTimeout).ConfigureAwait(false);
        if (c is not null)
        {
            ObserveStart(c);
            return await ContainerNodeAsync(nodeId, c.ID, c.State.Running, c.State.Status, c.State.ExitCode, c.Image, c.Config.Image, Label(c.Config.Labels, InstanceLabel), ct).ConfigureAwait(false);
        }
        VolumeResponse volume;
        try
        {
            volume = await CallAsync("inspect the volume", t => _client.Volumes.InspectAsync(VolumeName(nodeId), t), ct, _options.ListTimeout).ConfigureAwait(false);
        }
        catch (DockerApiException ex) when (DockerEngine.IsNotFound(ex))
        {
            return null;
        }
        if (!Ours(volume.Labels) || Label(volume.Labels, NodeLabel) != nodeId) return null;
        var tools = await CallAsync("list containers", t => _client.Containers.ListContainersAsync(
            new ContainersListParameters { All = true, Filters = Filters((NodeLabel, nodeId), (KindLabel, "tool")) }, t), ct, _options.ListTimeout).ConfigureAwait(false);
        var busy = tools.FirstOrDefault(t => Ours(t.Labels) && Label(t.Labels, NodeLabel) == nodeId && Label(t.Labels, KindLabel) == "tool" && t.State == "running");
        return Uninitialised(nodeId, busy, Label(volume.Labels, InstanceLabel));
    }

    /// <summary>Anything this runtime changed makes the next listing ask the engine again.</summary>
    private void Changed() => Interlocked.Increment(ref _generation);

    private async Task<IReadOnlyList<RuntimeNode>> ListFromEngineAsync(CancellationToken ct)
    {
        var containers = await CallAsync("list containers", t => _client.Containers.ListContainersAsync(
            new ContainersListParameters { All = true, Filters = Filters() }, t), ct, _options.ListingTimeout).ConfigureAwait(false);
        var volumes = await CallAsync("list volumes", t => _client.Volumes.ListAsync(
            new VolumesListParameters { Filters = Filters() }, t), ct, _options.ListingTimeout).ConfigureAwait(false);

        // Podman 4.3 ORs several label filters on volumes: keep only what carries all of ours, whatever the engine did.
        containers = containers.Where(c => Ours(c.Labels)).ToList();
        volumes.Volumes = (volumes.Volumes ?? []).Where(v => Ours(v.Labels)).ToList();
        // Two containers of one node only for a moment of a recreation (or after one cut short): the one of the node's name.
        var nodeContainers = containers.Where(c => Label(c.Labels, KindLabel) == "node" && Label(c.Labels, NodeLabel) is not null)
            .GroupBy(c => Label(c.Labels, NodeLabel)!).ToDictionary(g => g.Key,
                g => g.OrderBy(c => c.Names?.Contains("/" + ContainerName(g.Key)) == true ? 0 : 1).First(), StringComparer.Ordinal);
        var tools = containers.Where(c => Label(c.Labels, KindLabel) == "tool" && Label(c.Labels, NodeLabel) is not null)
            .ToLookup(c => Label(c.Labels, NodeLabel)!, StringComparer.Ordinal);
        var volumeNodes = (volumes.Volumes ?? []).Where(v => Label(v.Labels, NodeLabel) is not null)
            .GroupBy(v => Label(v.Labels, NodeLabel)!).ToDictionary(g => g.Key, g => g.First(), StringComparer.Ordinal);

        var result = new List<RuntimeNode>();
        foreach (var nodeId in nodeContainers.Keys.Union(volumeNodes.Keys).Order(StringComparer.Ordinal))
        {
            if (nodeContainers.TryGetValue(nodeId, out var c))
            {
                var running = c.State == "running";
                result.Add(await ContainerNodeAsync(nodeId, c.ID, running, c.State, ExitCode(c.Status), c.ImageID, c.Image, Label(c.Labels, InstanceLabel), ct).ConfigureAwait(false));
            }
            else
            {
                result.Add(Uninitialised(nodeId, tools[nodeId].FirstOrDefault(t => t.State == "running"), Label(volumeNodes[nodeId].Labels, InstanceLabel)));
            }
        }
        // What is remembered of stopped containers: only each listed container's present stop. A container that runs
        // again, stopped another way or went keeps nothing here (the cache grew by one entry a stop, for good).
        var present = nodeContainers.Values.Where(c => c.State != "running").Select(c => StoppedKey(c.ID, c.State, ExitCode(c.Status))).ToHashSet(StringComparer.Ordinal);
        foreach (var key in _stoppedDetails.Keys)
            if (!present.Contains(key)) _stoppedDetails.TryRemove(key, out _);
        return result;
    }

    /// <summary>How many stopped containers' details are remembered (tests: the cache keeps only present stops).</summary>
    internal int StoppedDetailsRemembered => _stoppedDetails.Count;

    private static string StoppedKey(string id, string? state, long? code) => $"{id}/{state}/{code}";

    /// <summary>"stopped", "exited (137)", "exited (1): FATAL: …", "image missing (…)": asked once per stopped container.</summary>
    private async Task<string> StoppedDetailAsync(string id, string? state, long? code, string imageId, string image, CancellationToken ct)
    {
        // podman's "stopped" (and "stopping"): the process is gone but its monitor has not recorded the exit yet. Not a
        // clean stop, and not known yet: asked again on the next listing.
        if (state is "stopped" or "stopping") return "exiting (its exit code is not recorded yet)";
        var key = StoppedKey(id, state, code);
        if (_stoppedDetails.TryGetValue(key, out var known)) return known;
        string detail;
        try
        {
            await CallAsync("inspect image", t => _client.Images.InspectImageAsync(imageId, t), ct, _options.ListTimeout).ConfigureAwait(false);
            detail = state switch
            {
                "exited" when code is null or 0 => "stopped",
                "exited" => $"exited ({code})" + await LastLogLineAsync(id, ct).ConfigureAwait(false),
                "created" => "stopped",
                var other => other ?? "stopped",
            };
        }
        catch (DockerImageNotFoundException)
        {
            detail = $"image missing ({image}): build it (deploy/images/build-local.sh) or pull it";
        }
        catch (DockerApiException ex) when (DockerEngine.IsNotFound(ex))
        {
            detail = $"image missing ({image}): build it (deploy/images/build-local.sh) or pull it";
        }
        _stoppedDetails[key] = detail;
        return detail;
    }

    private static int? ExitCode(string? status)
    {
        // "Exited (137) 5 seconds ago"
        if (status is null) return null;
        var open = status.IndexOf('(');
        var close = status.IndexOf(')');
        return open >= 0 && close > open && int.TryParse(status.AsSpan(open + 1, close - open - 1), NumberStyles.Integer, CultureInfo.InvariantCulture, out var code)
            ? code
            : null;
    }

    private async Task<string> LastLogLineAsync(string containerId, CancellationToken ct)
    {
        try
        {
            var tail = await LogsAsync(containerId, 5, ct).ConfigureAwait(false);
            var last = tail.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).LastOrDefault();
            return last is null ? "" : ": " + last;
        }
        catch (Exception ex) when (ex is DockerApiException or ContainerEngineException)
        {
            return "";
        }
    }

    // ---- platform access ----

    public Dingo.Ha.HealthTls HealthApiTls(string nodeId) => _access.HealthApiTls(nodeId);

    public async Task ApplyPlatformAccessAsync(PlatformAccess access, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(access);
        if (_access.Set(access)) _logger.LogInformation("Platform roles may log in from: {Networks} (and local sockets); TLS {Tls}", string.Join(", ", access.Networks),
            access.Tls is null ? "not yet offered (no platform CA known)" : access.RequireTls ? $"required, certificates of {access.Tls}" : $"offered, certificates of {access.Tls}");
        foreach (var node in await ListAsync(cancellationToken).ConfigureAwait(false))
        {
            if (!node.Running || _access.Due(node.NodeId) is null) continue;
            using var _ = await _nodeLocks.LockAsync(node.NodeId, cancellationToken).ConfigureAwait(false);
            var container = await InspectNodeAsync(node.NodeId, cancellationToken).ConfigureAwait(false);
            if (container is not { State.Running: true } || _access.Due(node.NodeId) is not { } hba) continue;
            // One archive: the TLS files and pg_hba.conf land together, before the reload.
            await UploadAsync(container.ID, AccessFiles(hba), cancellationToken).ConfigureAwait(false);
            // PostgreSQL is the container's PID 1: SIGHUP makes it read pg_hba.conf again.
            await CallAsync("signal the container to reload", t => _client.Containers.KillContainerAsync(container.ID, new ContainerKillParameters { Signal = "SIGHUP" }, t), cancellationToken).ConfigureAwait(false);
            _access.Applied(node.NodeId, hba);
            _logger.LogInformation("Node {NodeId}: pg_hba.conf{Tls} rewritten for the platform's current hosts and reloaded", node.NodeId, hba.Tls is null ? "" : " and TLS certificate");
        }
    }

    // ---- the warm pool: volumes initialised for nobody, ready to become a new cluster's first node's data ----
    //
    // An entry is a volume dingo-_warm-<id> (no node id can start with '_', so no node's names meet an entry's) with an
    // initdb of its own (its own system identifier) made by a one-shot container under a random superuser password that
    // initdb's short-lived pwfile and this cell's memory hold (never a disk, a label or the engine), then a never-started
    // marker container of the same name (kind "warm"): its existence says the initdb completed. A claim creates the
    // node's container on the entry's volume (labelled with it, since a volume cannot be renamed), then removes the
    // marker. The node container's first start gives the superuser the instance's password as a SCRAM verifier:
    // - by session: once PostgreSQL listens, the cell logs in with the entry's password (nobody else has it, so nobody
    //   else can log in meanwhile), sets the instance's verifier and writes the dingo-claimed marker into the volume
    //   (COPY … TO, as the server's user, as the node script would). No second start of PostgreSQL: in single-user mode
    //   the step was a whole start, catalog load and shutdown checkpoint before the start that serves, about 0.1–0.15
    //   core-s a claim, the largest cost of a new primary that was not a session (bench/Provision's Docker burst);
    // - in single-user mode before PostgreSQL ever listens (the node script, claim.sql) when the cell does not know the
    //   entry's password (it restarted since the fill), or when the session failed (the container is stopped and
    //   started again that way).
    // An entry taken is never offered again: an entry whose volume any node container mounts is not ready, whatever
    // its marker says. Entry volumes no container mounts (a fill or a removal cut short, a clone that replaced the data)
    // are removed by the next fill, under the same lock as claims and container recreation.

    internal const string WarmPrefix = "dingo-_warm-";
    // The superuser password of each entry this process filled (by volume), and of each node claimed from one whose
    // first start is still to come (by node): memory only. A cell that restarts forgets them, and its claims take the
    // single-user way.
    private readonly ConcurrentDictionary<string, string> _entryPasswords = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, string> _claimPasswords = new(StringComparer.Ordinal);
    private int _claimsBySession;

    /// <summary>Claims whose password step went over a session (tests).</summary>
    internal int ClaimsBySession => Volatile.Read(ref _claimsBySession);

    /// <summary>A claimed node's entry password replaced by a wrong one: its first start's session is refused (tests).</summary>
    internal void SpoilClaimPasswordForTests(string nodeId) => _claimPasswords[nodeId] = Secrets.Password();

    private readonly SemaphoreSlim _warmLock = new(1, 1);
    private readonly SemaphoreSlim _fillGate = new(1, 1);
    private readonly NodeWork _work;

    public bool NodeWorkQuietFor(TimeSpan span) => _work.QuietFor(span);

    public bool ServingWorkQuietFor(TimeSpan span) => _work.ServingQuietFor(span);

    // The ready entries as the last fill found them (oldest first), plus those made since: a claim takes one without
    // listing every container on the engine (a listing waits for every container being created or started, seconds in
    // a burst of provisions). Null until a fill or a claim has listed them. Guarded by _warmLock.
    private List<(string Volume, string MarkerId)>? _ready;
    // When the last fill listed and tidied: a full pool is looked at again after a minute, not at every fill (the keeper
    // fills every second, and a listing of every container on the engine each second was an idle cell's cost).
    private DateTime _tidiedAt = DateTime.MinValue;

    /// <summary>Entries ready to be claimed (with the current image).</summary>
    public async Task<int> WarmCountAsync(CancellationToken ct) => (await WarmMarkersAsync(ct).ConfigureAwait(false)).Ready.Count;

    private sealed record WarmView(List<ContainerListResponse> Ready, List<ContainerListResponse> Stale, List<ContainerListResponse> Containers);

    /// <summary>Our containers, the ready markers (oldest first), and the markers to remove (claimed already, or of another image).</summary>
    private async Task<WarmView> WarmMarkersAsync(CancellationToken ct)
    {
        var containers = (await CallAsync("list containers", t => _client.Containers.ListContainersAsync(
            new ContainersListParameters { All = true, Filters = Filters() }, t), ct).ConfigureAwait(false)).Where(c => Ours(c.Labels)).ToList();
        var taken = containers.Where(c => Label(c.Labels, KindLabel) == "node").Select(c => Label(c.Labels, VolumeLabel)).OfType<string>().ToHashSet(StringComparer.Ordinal);
        var markers = containers.Where(c => Label(c.Labels, KindLabel) == "warm" && Label(c.Labels, VolumeLabel) is not null).OrderBy(c => c.Created).ToList();
        var stale = markers.Where(c => taken.Contains(Label(c.Labels, VolumeLabel)!) || Label(c.Labels, ImageLabel) != _docker.Image).ToList();
        return new WarmView(markers.Except(stale).ToList(), stale, containers);
    }

    /// <summary>Keeps the pool at its size until cancelled (<see cref="WarmPoolLoop"/>).</summary>
    public Task KeepWarmAsync(CancellationToken ct) => _options.WarmPool <= 0 ? Task.CompletedTask
        : WarmPoolLoop.RunAsync(FillWarmOnceAsync, _work,
            ex => ex is ContainerEngineException or DockerApiException or InvalidOperationException or TimeoutException, _logger, ct);

    /// <summary>Tidies the pool, then adds one entry when it is short (true); false when nothing was to add.</summary>
    public async Task<bool> FillWarmOnceAsync(CancellationToken ct)
    {
        await _fillGate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            string name;
            await _warmLock.WaitAsync(ct).ConfigureAwait(false);
            try
            {
                if (_ready is { } known && known.Count >= _options.WarmPool && DateTime.UtcNow - _tidiedAt < TimeSpan.FromMinutes(1)) return false;
                var view = await WarmMarkersAsync(ct).ConfigureAwait(false);
                // Markers of entries taken (a claim cut short before it removed the marker), of another image, or
                // beyond the size; initdb containers of a fill cut short (the engine may still run one).
                var extra = view.Ready.Skip(Math.Max(0, _options.WarmPool)).ToList();
                foreach (var c in view.Stale.Concat(extra).Concat(view.Containers.Where(c => Label(c.Labels, KindLabel) == "warm-initdb")))
                    await RemoveContainerAsync(c.ID, ct).ConfigureAwait(false);
                // Entry volumes no remaining container mounts.
                var mounted = view.Containers.Except(view.Stale).Except(extra).Where(c => Label(c.Labels, KindLabel) != "warm-initdb")
                    .Select(c => Label(c.Labels, VolumeLabel)).OfType<string>().ToHashSet(StringComparer.Ordinal);
                var volumes = await CallAsync("list volumes", t => _client.Volumes.ListAsync(new VolumesListParameters { Filters = Filters((KindLabel, "warm")) }, t), ct).ConfigureAwait(false);
                foreach (var v in (volumes.Volumes ?? []).Where(v => Ours(v.Labels) && Label(v.Labels, KindLabel) == "warm" && !mounted.Contains(v.Name)))
                    await RemoveWarmVolumeAsync(v.Name, ct).ConfigureAwait(false);
                _ready = view.Ready.Except(extra).Select(c => (Label(c.Labels, VolumeLabel)!, c.ID)).ToList();
                _tidiedAt = DateTime.UtcNow;
                if (_ready.Count >= _options.WarmPool) return false;
                name = WarmPrefix + Guid.NewGuid().ToString("N");
                await CallAsync("create a warm pool volume", t => _client.Volumes.CreateAsync(new VolumesCreateParameters { Name = name, Labels = WarmLabels(name, "warm") }, t), ct).ConfigureAwait(false);
            }
            finally
            {
                _warmLock.Release();
            }
            // Outside the lock: claims need not wait for an initdb. The entry is not ready until its marker exists; a fill
            // runs only after the previous one ended (the gate), so no tidying happens between the volume and its marker.
            await EnsureImageAsync(ct).ConfigureAwait(false);
            var host = HostConfig(name, NodeLimits.Default);
            // Behind every node's work: the engine's lowest CPU weight.
            host.CPUShares = 2;
            var entryPassword = Secrets.Password();
            var result = await RunOneShotAsync(name + "-initdb", "initdb", WarmLabels(name, "warm-initdb"), InitdbScript,
                new Dictionary<string, string> { ["DINGO_SUPERUSER"] = DatabaseAdmin.SuperuserName },
                [new NodeFile(".pwfile", entryPassword)], host, "warm pool", ct).ConfigureAwait(false);
            if (result.ExitCode != 0)
            {
                await RemoveWarmVolumeAsync(name, ct).ConfigureAwait(false);
                throw new InvalidOperationException($"initdb failed with exit code {result.ExitCode}: {LastLines(result.Output)}");
            }
            // Made last: the marker is the proof the entry's initdb completed (and it mounts the volume, so the tidying keeps it).
            var marker = await CallAsync("create a warm pool marker", t => _client.Containers.CreateContainerAsync(new CreateContainerParameters
            {
                Name = name,
                Image = _docker.Image,
                User = _docker.User,
                Cmd = ["/bin/true"],
                Labels = WarmLabels(name, "warm"),
                HostConfig = HostConfig(name, NodeLimits.Default),
            }, t), ct).ConfigureAwait(false);
            _entryPasswords[name] = entryPassword;
            await _warmLock.WaitAsync(ct).ConfigureAwait(false);
            try
            {
                _ready?.Add((name, marker.ID));
            }
            finally
            {
                _warmLock.Release();
            }
            _logger.LogDebug("warm pool: entry {Entry} ready", name);
            return true;
        }
        finally
        {
            _fillGate.Release();
        }
    }

    private Dictionary<string, string> WarmLabels(string volume, string kind) => new(StringComparer.Ordinal)
    {
        [PlatformLabel] = _docker.Platform,
        [CellLabel] = _options.CellId,
        [KindLabel] = kind,
        [VolumeLabel] = volume,
        [ImageLabel] = _docker.Image,
    };

    /// <summary>
    /// Creates the node's container on a ready entry's volume; false when the pool is off or empty, or the node is not a
    /// new cluster's first node with the platform's superuser (others run initdb as before).
    /// </summary>
    private async Task<bool> TryClaimWarmAsync(NodeLaunchSpec spec, CancellationToken ct)
    {
        if (_options.WarmPool <= 0 || spec.Superuser.Username != DatabaseAdmin.SuperuserName || !Secrets.ScramReady(spec.Superuser.Password)) return false;
        await _warmLock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            _ready ??= (await WarmMarkersAsync(ct).ConfigureAwait(false)).Ready.Select(c => (Label(c.Labels, VolumeLabel)!, c.ID)).ToList();
            if (_ready.Count == 0) return false;
            var (volume, markerId) = _ready[0];
            _ready.RemoveAt(0);
            // Still this cell's entry (an engine would make a missing volume afresh, empty, for the container).
            try
            {
                var v = await CallAsync("inspect a warm pool volume", t => _client.Volumes.InspectAsync(volume, t), ct).ConfigureAwait(false);
                if (!Ours(v.Labels) || Label(v.Labels, KindLabel) != "warm") return false;
            }
            catch (DockerApiException ex) when (DockerEngine.IsNotFound(ex))
            {
                return false;
            }
            var limits = await _options.LimitsOf(spec.InstanceId, ct).ConfigureAwait(false);
            // The node container first: from then on the entry counts as taken, whether or not the marker goes.
            await CreateNodeContainerAsync(spec, limits, ct, volume, claimed: true).ConfigureAwait(false);
            if (_entryPasswords.TryRemove(volume, out var entryPassword)) _claimPasswords[spec.NodeId] = entryPassword;
            _work.Touch();
            try
            {
                await RemoveContainerAsync(markerId, ct).ConfigureAwait(false);
            }
            catch (ContainerEngineException ex)
            {
                _logger.LogWarning("warm pool: could not remove the marker of {Entry} (the next fill will): {Error}", volume, ex.Message);
            }
            _logger.LogInformation("Node {NodeId}: data taken from the warm pool (volume {Volume})", spec.NodeId, volume);
            return true;
        }
        finally
        {
            _warmLock.Release();
        }
    }

    /// <summary>The superuser's password for the node script's single-user step: a SCRAM verifier, never the password.</summary>
    private static NodeFile ClaimFile(Dingo.Model.Credentials superuser) => new("claim.sql", ClaimStatement(superuser) + "\n");

    /// <summary>The claim's one statement (single-user step or session): the instance's SCRAM verifier for the superuser.</summary>
    private static string ClaimStatement(Dingo.Model.Credentials superuser) =>
        $"ALTER ROLE \"{superuser.Username.Replace("\"", "\"\"", StringComparison.Ordinal)}\" PASSWORD '{Secrets.ScramVerifier(superuser.Password)}'";

    /// <summary>Removes a warm pool entry's volume (and whatever container still mounts it); only ever one of this cell's entries.</summary>
    private async Task RemoveWarmVolumeAsync(string name, CancellationToken ct)
    {
        if (!name.StartsWith(WarmPrefix, StringComparison.Ordinal)) throw new InvalidOperationException($"{name} is not a warm pool volume");
        _entryPasswords.TryRemove(name, out _);
        try
        {
            var volume = await CallAsync("inspect a warm pool volume", t => _client.Volumes.InspectAsync(name, t), ct).ConfigureAwait(false);
            if (!Ours(volume.Labels) || Label(volume.Labels, KindLabel) != "warm")
                throw new ContainerEngineException($"volume {name} on the engine at {_docker.Endpoint} is not this cell's; not removing it");
            await CallAsync("remove a warm pool volume", t => _client.Volumes.RemoveAsync(name, true, t), ct).ConfigureAwait(false);
        }
        catch (DockerApiException ex) when (DockerEngine.IsNotFound(ex))
        {
        }
    }

    // ---- the node's life ----

    public async Task CreateAsync(NodeLaunchSpec spec, CancellationToken cancellationToken)
    {
        using var work = _work.Begin();
        ArgumentNullException.ThrowIfNull(spec);
        NodeIdRule.Check(spec.NodeId);
        using var _ = await _nodeLocks.LockAsync(spec.NodeId, cancellationToken).ConfigureAwait(false);
        if (await InspectNodeAsync(spec.NodeId, cancellationToken).ConfigureAwait(false) is not null) return;
        try
        {
            if (await TryClaimWarmAsync(spec, cancellationToken).ConfigureAwait(false)) return;
            var limits = await PrepareVolumeAsync(spec, cancellationToken).ConfigureAwait(false);
            // The password reaches initdb only as a 0600 file that lives as long as initdb.
            var result = await RunToolAsync(spec, "initdb", InitdbScript,
                new Dictionary<string, string> { ["DINGO_SUPERUSER"] = spec.Superuser.Username },
                [new NodeFile(".pwfile", spec.Superuser.Password)], limits, cancellationToken).ConfigureAwait(false);
            if (result.ExitCode != 0) throw ToolFailure(spec.NodeId, "initdb", result);
            // Made last: the node container is the proof that the data directory is complete.
            await CreateNodeContainerAsync(spec, limits, cancellationToken).ConfigureAwait(false);
            _logger.LogInformation("Node {NodeId}: data initialised in volume {Volume}", spec.NodeId, VolumeName(spec.NodeId));
        }
        finally
        {
            Changed();
        }
    }

    public async Task StartAsync(NodeLaunchSpec spec, StandbyConfig? standby, CancellationToken cancellationToken)
    {
        // A replica's start follows its clone: no application waits for it.
        using var work = _work.Begin(serving: standby?.Primary is null);
        ArgumentNullException.ThrowIfNull(spec);
        NodeIdRule.Check(spec.NodeId);
        using var _ = await _nodeLocks.LockAsync(spec.NodeId, cancellationToken).ConfigureAwait(false);
        var container = await InspectNodeAsync(spec.NodeId, cancellationToken).ConfigureAwait(false)
            ?? throw new InvalidOperationException($"Node {spec.NodeId} cannot start: its data directory is not initialised.");
        if (container.State.Running) return;
        try
        {
            await RemoveToolContainersAsync(spec.NodeId, cancellationToken).ConfigureAwait(false);
            await RemovePreviousContainerAsync(spec.NodeId, cancellationToken).ConfigureAwait(false);
            var limits = await _options.LimitsOf(spec.InstanceId, cancellationToken).ConfigureAwait(false);
            var id = container.ID;
            var volume = VolumeOf(container);
            var claimed = Label(container.Config.Labels, ClaimLabel) is not null;
            if (container.Config.Image != _docker.Image || Label(container.Config.Labels, MemoryLabel) != Memory(limits) || Label(container.Config.Labels, CpusLabel) != Cpus(limits))
            {
                // A new image or new limits apply when the node is down anyway; the volume keeps the data. The old container
                // steps aside under another name, the new one is made, then the old one goes: at every moment a container
                // says the data is complete and which volume holds it (a cell that dies in between finds the old one again,
                // InspectNodeAsync, instead of taking the volume for half-made data and running initdb over it). Under the
                // warm pool's lock: its tidying removes entry volumes no container mounts.
                _logger.LogInformation("Node {NodeId}: recreating its container ({Image}, {Memory} bytes, {Cpus} CPUs)", spec.NodeId, _docker.Image, limits.MemoryBytes, limits.Cpus);
                await EnsureImageAsync(cancellationToken).ConfigureAwait(false);
                await _warmLock.WaitAsync(cancellationToken).ConfigureAwait(false);
                try
                {
                    var old = id;
                    await CallAsync("rename the old container", async t =>
                    {
                        await _client.Containers.RenameContainerAsync(old, new ContainerRenameParameters { NewName = PreviousContainerName(spec.NodeId) }, t).ConfigureAwait(false);
                        return true;
                    }, cancellationToken).ConfigureAwait(false);
                    id = await CreateNodeContainerAsync(spec, limits, cancellationToken, volume, claimed).ConfigureAwait(false);
                    await RemoveContainerAsync(old, cancellationToken).ConfigureAwait(false);
                }
                finally
                {
                    _warmLock.Release();
                }
            }
            var files = SettingsFiles(spec, standby, limits);
            // The entry's password, once: a start that fails on the way leaves the claim to the single-user step.
            // A standby cannot take a password (read-only): its claim goes the single-user way, before it starts.
            var entryPassword = claimed && _claimPasswords.TryRemove(spec.NodeId, out var known) && standby is null ? known : null;
            await StartContainerAsync(spec, id, claimed && entryPassword is null ? [.. files, ClaimFile(spec.Superuser)] : files, cancellationToken).ConfigureAwait(false);
            if (entryPassword is not null && !await ClaimBySessionAsync(spec, entryPassword, cancellationToken).ConfigureAwait(false))
            {
                // Stopped and started again the single-user way (the step runs while dingo-claimed is missing).
                await CallAsync("stop the container", t => _client.Containers.StopContainerAsync(id, new ContainerStopParameters { WaitBeforeKillSeconds = 10 }, t), cancellationToken).ConfigureAwait(false);
                await StartContainerAsync(spec, id, [.. files, ClaimFile(spec.Superuser)], cancellationToken).ConfigureAwait(false);
            }
            _logger.LogInformation("Node {NodeId}: container {Container} started on {Address}:{Port} ({Role})", spec.NodeId, Short(id), spec.ListenAddress, spec.Port, standby is null ? "primary" : "standby");
        }
        finally
        {
            Changed();
        }
    }

    private async Task StartContainerAsync(NodeLaunchSpec spec, string id, List<NodeFile> files, CancellationToken ct)
    {
        await UploadAsync(id, files, ct).ConfigureAwait(false);
        try
        {
            await CallAsync("start the container", t => _client.Containers.StartContainerAsync(id, new ContainerStartParameters(), t), ct).ConfigureAwait(false);
        }
        catch (DockerApiException ex) when (ex.StatusCode == System.Net.HttpStatusCode.NotFound || DockerEngine.Said(ex).Contains("image", StringComparison.OrdinalIgnoreCase))
        {
            throw new ContainerEngineException($"Node {spec.NodeId}: the engine at {_docker.Endpoint} cannot start container {ContainerName(spec.NodeId)}: {DockerEngine.Said(ex)}", ex);
        }
        await WaitUntilListeningAsync(spec, id, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// A claimed node's password step over a session (the warm pool, above): logged in with the entry's password, the
    /// superuser gets the instance's SCRAM verifier and the volume its dingo-claimed marker, neither statement logged.
    /// False, with the reason logged, when it could not be done within the start's timeout.
    /// </summary>
    private async Task<bool> ClaimBySessionAsync(NodeLaunchSpec spec, string entryPassword, CancellationToken ct)
    {
        var cs = DatabaseAdmin.ConnectionString(spec.ListenAddress, spec.Port, new Dingo.Model.Credentials(spec.Superuser.Username, entryPassword), "postgres", openSeconds: 10);
        // At the session's start, not as statements: an error's log line would otherwise carry the verifier.
        cs.Options = "-c log_statement=none -c log_min_error_statement=panic";
        var waited = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                await using var conn = PlatformConnectionTls.Connection(cs);
                await conn.OpenAsync(ct).ConfigureAwait(false);
                await using (var alter = new Npgsql.NpgsqlCommand(ClaimStatement(spec.Superuser), conn))
                    await alter.ExecuteNonQueryAsync(ct).ConfigureAwait(false);
                // Only once the password holds: a marker before it would leave a node nobody can log in to.
                await using (var marker = new Npgsql.NpgsqlCommand($"COPY (SELECT 1 WHERE false) TO '{DataMount}/dingo-claimed'", conn))
                    await marker.ExecuteNonQueryAsync(ct).ConfigureAwait(false);
                Interlocked.Increment(ref _claimsBySession);
                return true;
            }
            catch (Exception ex) when ((ex is Npgsql.NpgsqlException or TimeoutException) && !ct.IsCancellationRequested)
            {
                // PostgreSQL listens before it accepts sessions (57P03 while it starts): asked again until the start's timeout.
                var starting = ex is Npgsql.PostgresException { SqlState: Npgsql.PostgresErrorCodes.CannotConnectNow } || ex is Npgsql.NpgsqlException { IsTransient: true };
                if (!starting || waited.Elapsed > _options.StartTimeout)
                {
                    _logger.LogWarning("Node {NodeId}: giving the superuser the instance's password over a session failed ({Error}); starting again to do it in single-user mode",
                        spec.NodeId, ex.Message);
                    return false;
                }
            }
            await Task.Delay(50, ct).ConfigureAwait(false);
        }
    }

    /// <summary>How often a start that waits for PostgreSQL to listen asks the engine whether the container still runs.</summary>
    internal static readonly TimeSpan StartInspectEvery = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Returns once PostgreSQL listens (it opens its port before recovery); throws with its last words if it exits. The
    /// port is tried every 50 ms, the engine asked every <see cref="StartInspectEvery"/>: an inspect each time was 20
    /// calls a second into the engine per start, and a saturated machine's starts wait for seconds (bench/Provision's
    /// Docker burst, ten starts at once: podman the first user of the two cores).
    /// </summary>
    private async Task WaitUntilListeningAsync(NodeLaunchSpec spec, string id, CancellationToken ct)
    {
        var waited = Stopwatch.StartNew();
        var inspected = -StartInspectEvery; // the first turn asks
        while (true)
        {
            if (waited.Elapsed - inspected >= StartInspectEvery)
            {
                inspected = waited.Elapsed;
                var container = await CallAsync("inspect the container", t => _client.Containers.InspectContainerAsync(id, t), ct).ConfigureAwait(false);
                ObserveStart(container);
                var state = container.State;
                if (!state.Running)
                {
                    var logs = await LogsAsync(id, 10, ct).ConfigureAwait(false);
                    throw new InvalidOperationException($"Node {spec.NodeId}: PostgreSQL exited at once ({(state.OOMKilled ? "out of memory" : $"exit code {state.ExitCode}")}): {LastLines(logs)}");
                }
            }
            if (await ListeningAsync(spec.ListenAddress, spec.Port, ct).ConfigureAwait(false)) return;
            if (waited.Elapsed > _options.StartTimeout)
                throw new InvalidOperationException($"Node {spec.NodeId}: PostgreSQL did not listen on {spec.ListenAddress}:{spec.Port} within {_options.StartTimeout.TotalSeconds:0}s: {LastLines(await LogsAsync(id, 10, ct).ConfigureAwait(false))}");
            await Task.Delay(50, ct).ConfigureAwait(false);
        }
    }

    private static async Task<bool> ListeningAsync(string address, int port, CancellationToken ct)
    {
        using var tcp = new TcpClient();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromMilliseconds(500));
        try
        {
            await tcp.ConnectAsync(address, port, timeout.Token).ConfigureAwait(false);
            return true;
        }
        catch (Exception ex) when (ex is SocketException || (ex is OperationCanceledException && !ct.IsCancellationRequested))
        {
            return false;
        }
    }

    public async Task ConfigureStandbyAsync(NodeLaunchSpec spec, StandbyConfig standby, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(spec);
        NodeIdRule.Check(spec.NodeId);
        using var _ = await _nodeLocks.LockAsync(spec.NodeId, cancellationToken).ConfigureAwait(false);
        var container = await InspectNodeAsync(spec.NodeId, cancellationToken).ConfigureAwait(false)
            ?? throw new InvalidOperationException($"Node {spec.NodeId} cannot be configured: its data directory is not initialised.");
        var limits = await _options.LimitsOf(spec.InstanceId, cancellationToken).ConfigureAwait(false);
        // Uploads work on a running or a stopped container alike; the caller reloads PostgreSQL.
        await UploadAsync(container.ID, SettingsFiles(spec, standby, limits), cancellationToken).ConfigureAwait(false);
    }

    public async Task CloneAsync(NodeLaunchSpec spec, ReplicationSource source, CancellationToken cancellationToken)
    {
        using var work = _work.Begin(serving: false);
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(source);
        NodeIdRule.Check(spec.NodeId);
        using var _ = await _nodeLocks.LockAsync(spec.NodeId, cancellationToken).ConfigureAwait(false);
        await _cloneTurn.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            // The marker goes first: a clone cut short must never pass for a complete data directory.
            await RemoveNodeContainerAsync(spec.NodeId, cancellationToken).ConfigureAwait(false);
            var limits = await PrepareVolumeAsync(spec, cancellationToken).ConfigureAwait(false);
            var result = await RunToolAsync(spec, "clone", CloneScript, SourceEnvironment(source),
                SourceFiles(source), limits, cancellationToken).ConfigureAwait(false);
            if (result.ExitCode != 0) throw ToolFailure(spec.NodeId, "pg_basebackup", result);
            await CreateNodeContainerAsync(spec, limits, cancellationToken).ConfigureAwait(false);
            _logger.LogInformation("Node {NodeId}: cloned from {Host}:{Port}", spec.NodeId, source.Host, source.Port);
        }
        finally
        {
            _cloneTurn.Release();
            Changed();
        }
    }

    /// <summary>
    /// One clone at a time per cell: each is a tool container's whole lifecycle in the engine and a copy of its leader's
    /// data, and in a burst of provisions ten clones at once took the engine from the new primaries' starts, which are what
    /// the applications wait for (a `cluster` is bindable before its replica is built).
    /// </summary>
    private readonly SemaphoreSlim _cloneTurn = new(1, 1);

    // Recovery from a base backup and archived WAL uploaded into the volume beforehand: PostgreSQL replays with no TCP
    // listener, promotes, stops; then single-user mode gives the superuser this instance's password. Exit 3: the
    // recovery target was never reached (nothing committed after it), so the caller replays to the end instead. The
    // last line says where recovery ended (the new timeline's history), for the check that it reached what was asked.
    private const string RestoreScript = """
        set -e
        D=/var/lib/postgresql/data
        cp -a /restore/pgdata/. "$D/pgdata/"
        rm -rf /restore/pgdata
        chmod 700 "$D/pgdata"
        rm -f "$D/pgdata/standby.signal" "$D/pgdata/postmaster.pid" "$D/pgdata/postmaster.opts"
        : > "$D/pgdata/recovery.signal"
        postgres -D "$D/pgdata" -c config_file=/etc/dingo/restore.conf > /tmp/restore.log 2>&1 &
        pid=$!
        while kill -0 "$pid" 2>/dev/null; do
          if [ ! -f "$D/pgdata/recovery.signal" ] && grep -q 'ready to accept connections' /tmp/restore.log; then
            kill -INT "$pid"
            while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
            postgres --single -D "$D/pgdata" -c config_file=/etc/dingo/restore.conf postgres < /etc/dingo/.restore.sql > /dev/null
            rm -f /etc/dingo/.restore.sql
            grep -o 'redo done at [0-9A-F]*/[0-9A-F]*' /tmp/restore.log || true
            h=""
            for f in "$D"/pgdata/pg_wal/*.history; do if [ -f "$f" ]; then h="$f"; fi; done
            last=""
            if [ -n "$h" ]; then
              while IFS= read -r line || [ -n "$line" ]; do case "$line" in '#'*|'') ;; *) last="$line" ;; esac; done < "$h"
              printf 'dingo-recovery-end %s %s\n' "${h##*/}" "$last"
            fi
            exit 0
          fi
          sleep 0.2
        done
        cat /tmp/restore.log >&2
        rm -f /etc/dingo/.restore.sql
        if grep -q 'recovery ended before configured recovery target was reached' /tmp/restore.log; then exit 3; fi
        exit 1
        """;

    private const string WipeScript = """
        set -e
        rm -rf /var/lib/postgresql/data/pgdata
        mkdir -p /var/lib/postgresql/data/pgdata
        chmod 700 /var/lib/postgresql/data/pgdata
        """;

    public async Task RestoreAsync(NodeLaunchSpec spec, RestoreInput input, CancellationToken cancellationToken)
    {
        using var work = _work.Begin();
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(input);
        NodeIdRule.Check(spec.NodeId);
        using var _ = await _nodeLocks.LockAsync(spec.NodeId, cancellationToken).ConfigureAwait(false);
        try
        {
            // As with a clone: the node container (the marker) goes first, and comes back only once recovery is done.
            await RemoveNodeContainerAsync(spec.NodeId, cancellationToken).ConfigureAwait(false);
            var limits = await PrepareVolumeAsync(spec, cancellationToken).ConfigureAwait(false);
            await WipeAsync(spec, limits, cancellationToken).ConfigureAwait(false);
            var target = input.TargetTime;
            ToolResult? restored = null;
            for (var attempt = 0; ; attempt++)
            {
                var result = await RunRestoreToolAsync(spec, input, target, limits, cancellationToken).ConfigureAwait(false);
                restored = result;
                if (result.ExitCode == 0) break;
                if (result.ExitCode == 3 && target is not null && attempt == 0)
                {
                    _logger.LogInformation("Node {NodeId}: no commit after {Target:O} in the archive; recovering to its end", spec.NodeId, target);
                    target = null;
                    await WipeAsync(spec, limits, cancellationToken).ConfigureAwait(false);
                    continue;
                }
                throw ToolFailure(spec.NodeId, "recovery from the backup", result);
            }
            // Promoted is not enough: recovery also ends early where WAL is missing. The node container (the marker)
            // is created only once recovery reached what was asked.
            var end = RecoveryEndFrom(restored!.Output);
            var verdict = Dingo.Backups.RestoreVerification.Decide(input.Goal, end,
                end is null ? null : Dingo.Backups.RestoreVerification.RecordEndAt(input.WalDir, end.Timeline, end.Lsn,
                Dingo.Backups.RestoreVerification.RedoDoneAt(restored!.Output), Dingo.Backups.WalSegment.DefaultSize));
            if (!verdict.Ok) throw new Dingo.Backups.RestoreException(verdict.Sentence);
            _logger.LogInformation("Node {NodeId}: {Verdict}", spec.NodeId, verdict.Sentence);
            await CreateNodeContainerAsync(spec, limits, cancellationToken).ConfigureAwait(false);
            _logger.LogInformation("Node {NodeId}: restored from a base backup and archived WAL (target {Target})", spec.NodeId, input.TargetTime?.ToString("O") ?? "latest");
        }
        finally
        {
            Changed();
        }
    }

    /// <summary>The restore script's last word: "dingo-recovery-end 0000000N.history parentTLI switchpoint reason".</summary>
    internal static Dingo.Backups.RecoveryEnd? RecoveryEndFrom(string output)
    {
        const string prefix = "dingo-recovery-end ";
        var line = output.Split('\n').Select(l => l.TrimEnd('\r')).LastOrDefault(l => l.StartsWith(prefix, StringComparison.Ordinal));
        if (line is null) return null;
        var rest = line[prefix.Length..];
        var space = rest.IndexOf(' ', StringComparison.Ordinal);
        if (space != 16 || !uint.TryParse(rest.AsSpan(0, 8), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var tli)) return null;
        return Dingo.Backups.RecoveryEnd.Parse(tli, rest[(space + 1)..]);
    }

    /// <summary>The image and the node's volume ready for a tool that writes its data; returns the plan's limits for it.</summary>
    private async Task<NodeLimits> PrepareVolumeAsync(NodeLaunchSpec spec, CancellationToken ct)
    {
        await EnsureImageAsync(ct).ConfigureAwait(false);
        await EnsureVolumeAsync(spec, ct).ConfigureAwait(false);
        return await _options.LimitsOf(spec.InstanceId, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Before a clone or a restore replaces the node's data: its container goes, and with it a warm pool entry's volume
    /// it mounted (the new data goes into the node's own volume; the pool's tidying removes the entry's if this cannot).
    /// </summary>
    private async Task RemoveNodeContainerAsync(string nodeId, CancellationToken ct)
    {
        if (await InspectNodeAsync(nodeId, ct).ConfigureAwait(false) is not { } old) return;
        await RemoveContainerAsync(old.ID, ct).ConfigureAwait(false);
        if (Label(old.Config.Labels, VolumeLabel) is { } warm) await RemoveWarmVolumeAsync(warm, ct).ConfigureAwait(false);
    }

    private async Task WipeAsync(NodeLaunchSpec spec, NodeLimits limits, CancellationToken ct)
    {
        var wiped = await RunToolAsync(spec, "wipe", WipeScript, new Dictionary<string, string>(), [], limits, ct).ConfigureAwait(false);
        if (wiped.ExitCode != 0) throw ToolFailure(spec.NodeId, "preparing the volume", wiped);
    }

    /// <summary>A one-shot container on the node's volume: the backup and the WAL uploaded through the archive API (any engine, local or remote), then recovery.</summary>
    private async Task<ToolResult> RunRestoreToolAsync(NodeLaunchSpec spec, RestoreInput input, DateTimeOffset? target, NodeLimits limits, CancellationToken ct)
    {
        await RemoveToolContainersAsync(spec.NodeId, ct).ConfigureAwait(false);
        var labels = Labels(spec);
        labels[KindLabel] = "tool";
        labels["dingo.tool"] = "restore";
        var created = await CallAsync("create a tool container", t => _client.Containers.CreateContainerAsync(new CreateContainerParameters
        {
            Name = $"{ContainerName(spec.NodeId)}-restore",
            Image = _docker.Image,
            User = _docker.User,
            Cmd = ["/bin/sh", "-c", RestoreScript],
            Labels = labels,
            HostConfig = HostConfig(VolumeName(spec.NodeId), limits),
        }, t), ct).ConfigureAwait(false);
        try
        {
            // Into the tool container's own file system (engines do not all reach a volume before the container runs);
            // the script copies the data directory into the volume.
            await UploadTarAsync(created.ID, Path.Combine(input.BackupDir, "base.tar"), "/restore/pgdata", ct).ConfigureAwait(false);
            var walTar = Path.Combine(input.BackupDir, "pg_wal.tar");
            if (File.Exists(walTar)) await UploadTarAsync(created.ID, walTar, "/restore/pgdata/pg_wal", ct).ConfigureAwait(false);
            await UploadFolderAsync(created.ID, input.WalDir, "/restore/wal", ct).ConfigureAwait(false);
            var conf = new StringBuilder()
                .AppendLine("listen_addresses = ''")
                .AppendLine(CultureInfo.InvariantCulture, $"port = {spec.Port}")
                .AppendLine("unix_socket_directories = '/tmp'")
                .AppendLine("hba_file = '/etc/dingo/restore_hba.conf'")
                .AppendLine("shared_buffers = '32MB'")
                .AppendLine("jit = off")
                .AppendLine(CultureInfo.InvariantCulture, $"restore_command = 'cp /restore/wal/%f %p'")
                .AppendLine("recovery_target_timeline = 'latest'")
                .AppendLine("recovery_target_action = 'promote'");
            if (target is { } t)
                conf.AppendLine(CultureInfo.InvariantCulture, $"recovery_target_time = {NodeSettings.Quote(t.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss.ffffff", CultureInfo.InvariantCulture) + "+00")}")
                    .AppendLine("recovery_target_inclusive = false");
            // The restored roles carry the source's passwords: this instance's superuser password, set in single-user mode.
            var sql = $"ALTER ROLE \"{spec.Superuser.Username}\" PASSWORD '{spec.Superuser.Password.Replace("'", "''", StringComparison.Ordinal)}';\n";
            await UploadAsync(created.ID, [new NodeFile("restore.conf", conf.ToString()), new NodeFile("restore_hba.conf", "local all all trust\n"), new NodeFile(".restore.sql", sql)], ct).ConfigureAwait(false);
            await CallAsync("start a tool container", t => _client.Containers.StartContainerAsync(created.ID, new ContainerStartParameters(), t), ct).ConfigureAwait(false);
            var exit = await WaitExitAsync(created.ID, "wait for the restore", ct).ConfigureAwait(false);
            var output = await LogsAsync(created.ID, 20, ct).ConfigureAwait(false);
            return new ToolResult(exit, output);
        }
        finally
        {
            try { await RemoveContainerAsync(created.ID, CancellationToken.None).ConfigureAwait(false); }
            catch (ContainerEngineException ex) { _logger.LogWarning("Node {NodeId}: could not remove the restore container (the next step will): {Error}", spec.NodeId, ex.Message); }
        }
    }

    /// <summary>Extracts a tar into the container under <paramref name="into"/>, every entry owned by the PostgreSQL user.</summary>
    private async Task UploadTarAsync(string containerId, string tarPath, string into, CancellationToken ct)
    {
        var rewritten = Path.GetTempFileName();
        try
        {
            await using (var source = File.OpenRead(tarPath))
            await using (var destination = File.Create(rewritten))
            {
                using var reader = new TarReader(source);
                await using var writer = new TarWriter(destination, TarEntryFormat.Pax, leaveOpen: true);
                var parts = into.Trim('/').Split('/');
                for (var i = 1; i <= parts.Length; i++)
                    await writer.WriteEntryAsync(new PaxTarEntry(TarEntryType.Directory, string.Join('/', parts.Take(i)) + "/")
                    {
                        Uid = _user.Uid, Gid = _user.Gid, Mode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, ModificationTime = DateTimeOffset.UtcNow,
                    }, ct).ConfigureAwait(false);
                while (await reader.GetNextEntryAsync(copyData: false, ct).ConfigureAwait(false) is { } entry)
                {
                    if (entry.EntryType is not (TarEntryType.Directory or TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.SymbolicLink)) continue;
                    var name = into.TrimStart('/') + "/" + entry.Name.TrimStart('.', '/');
                    var type = entry.EntryType == TarEntryType.V7RegularFile ? TarEntryType.RegularFile : entry.EntryType;
                    var copy = new PaxTarEntry(type, name)
                    {
                        Uid = _user.Uid, Gid = _user.Gid, Mode = entry.Mode, ModificationTime = entry.ModificationTime,
                    };
                    if (type == TarEntryType.RegularFile) copy.DataStream = entry.DataStream;
                    if (type == TarEntryType.SymbolicLink) copy.LinkName = entry.LinkName;
                    await writer.WriteEntryAsync(copy, ct).ConfigureAwait(false);
                }
            }
            await using var tar = File.OpenRead(rewritten);
            await CallAsync("upload the backup", async t =>
            {
                await _client.Containers.ExtractArchiveToContainerAsync(containerId, new ContainerPathStatParameters { Path = "/", AllowOverwriteDirWithFile = false }, tar, t).ConfigureAwait(false);
                return true;
            }, ct, _options.ToolTimeout).ConfigureAwait(false);
        }
        finally
        {
            File.Delete(rewritten);
        }
    }

    /// <summary>Uploads every file of a local folder into <paramref name="into"/> in the container.</summary>
    private async Task UploadFolderAsync(string containerId, string folder, string into, CancellationToken ct)
    {
        var tarPath = Path.GetTempFileName();
        try
        {
            await using (var fs = File.Create(tarPath))
            await using (var writer = new TarWriter(fs, TarEntryFormat.Pax, leaveOpen: true))
            {
                foreach (var file in Directory.EnumerateFiles(folder).Order(StringComparer.Ordinal))
                {
                    await using var data = File.OpenRead(file);
                    await writer.WriteEntryAsync(new PaxTarEntry(TarEntryType.RegularFile, Path.GetFileName(file))
                    {
                        Uid = _user.Uid, Gid = _user.Gid, Mode = UnixFileMode.UserRead | UnixFileMode.UserWrite, ModificationTime = DateTimeOffset.UtcNow, DataStream = data,
                    }, ct).ConfigureAwait(false);
                }
            }
            await UploadTarAsync(containerId, tarPath, into, ct).ConfigureAwait(false);
        }
        finally
        {
            File.Delete(tarPath);
        }
    }

    public async Task RewindAsync(NodeLaunchSpec spec, ReplicationSource source, CancellationToken cancellationToken)
    {
        using var work = _work.Begin();
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(source);
        NodeIdRule.Check(spec.NodeId);
        using var _ = await _nodeLocks.LockAsync(spec.NodeId, cancellationToken).ConfigureAwait(false);
        var container = await InspectNodeAsync(spec.NodeId, cancellationToken).ConfigureAwait(false)
            ?? throw new InvalidOperationException($"Node {spec.NodeId} cannot be rewound: its data directory is not initialised.");
        try
        {
            await StopContainerAsync(container, cancellationToken).ConfigureAwait(false);
            var limits = await _options.LimitsOf(spec.InstanceId, cancellationToken).ConfigureAwait(false);
            var result = await RunToolAsync(spec, "rewind", RewindScript, SourceEnvironment(source),
                SourceFiles(source), limits, cancellationToken, VolumeOf(container)).ConfigureAwait(false);
            if (result.ExitCode != 0) throw ToolFailure(spec.NodeId, "pg_rewind", result);
            _logger.LogInformation("Node {NodeId}: rewound to the timeline of {Host}:{Port}", spec.NodeId, source.Host, source.Port);
        }
        finally
        {
            Changed();
        }
    }

    public async Task<int?> PostmasterPidAsync(string nodeId, CancellationToken cancellationToken)
    {
        NodeIdRule.Check(nodeId);
        // The container's first process is the postmaster (the node script execs it); its PID as the host sees it.
        var container = await InspectNodeAsync(nodeId, cancellationToken).ConfigureAwait(false);
        return container?.State is { Running: true, Pid: > 1 } state ? (int)state.Pid : null;
    }

    public async Task<IReadOnlyList<string>> AddTimelineHistoriesAsync(string nodeId, IReadOnlyList<TimelineHistoryFile> files, CancellationToken cancellationToken)
    {
        NodeIdRule.Check(nodeId);
        using var _ = await _nodeLocks.LockAsync(nodeId, cancellationToken).ConfigureAwait(false);
        var container = await InspectNodeAsync(nodeId, cancellationToken).ConfigureAwait(false)
            ?? throw new InvalidOperationException($"Node {nodeId} has no container: its data directory is not initialised.");
        var absent = new List<TimelineHistoryFile>();
        foreach (var file in files)
        {
            // Only where PostgreSQL has no file of that name (the archive API would replace it).
            try
            {
                await CallAsync("look into pg_wal", t => _client.Containers.GetArchiveFromContainerAsync(container.ID,
                    new GetArchiveFromContainerParameters { Path = $"{PgData}/pg_wal/{file.Name}" }, statOnly: true, t), cancellationToken).ConfigureAwait(false);
            }
            catch (DockerApiException ex) when (DockerEngine.IsNotFound(ex))
            {
                absent.Add(file);
            }
        }
        if (absent.Count == 0) return [];
        using var tar = new MemoryStream();
        await using (var writer = new TarWriter(tar, TarEntryFormat.Pax, leaveOpen: true))
        {
            foreach (var file in absent)
                await writer.WriteEntryAsync(new PaxTarEntry(TarEntryType.RegularFile, $"{PgData.TrimStart('/')}/pg_wal/{file.Name}")
                {
                    Uid = _user.Uid, Gid = _user.Gid, Mode = UnixFileMode.UserRead | UnixFileMode.UserWrite, ModificationTime = DateTimeOffset.UtcNow,
                    DataStream = new MemoryStream(file.Content),
                }, cancellationToken).ConfigureAwait(false);
        }
        tar.Position = 0;
        await CallAsync("write timeline history files into pg_wal", t =>
            _client.Containers.ExtractArchiveToContainerAsync(container.ID, new ContainerPathStatParameters { Path = "/", AllowOverwriteDirWithFile = false }, tar, t),
            cancellationToken).ConfigureAwait(false);
        return absent.Select(f => f.Name).ToList();
    }

    public async Task StopAsync(string nodeId, CancellationToken cancellationToken)
    {
        NodeIdRule.Check(nodeId);
        using var _ = await _nodeLocks.LockAsync(nodeId, cancellationToken).ConfigureAwait(false);
        if (await InspectNodeAsync(nodeId, cancellationToken).ConfigureAwait(false) is not { } container) return;
        try
        {
            await StopContainerAsync(container, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            Changed();
        }
    }

    /// <summary>Nothing to do: every container and volume of a node carries its instance as a label from its creation on.</summary>
    public Task RecordInstanceAsync(string nodeId, string instanceId, CancellationToken cancellationToken) => Task.CompletedTask;

    public async Task RemoveAsync(string nodeId, CancellationToken cancellationToken)
    {
        NodeIdRule.Check(nodeId);
        using var _ = await _nodeLocks.LockAsync(nodeId, cancellationToken).ConfigureAwait(false);
        try
        {
            var all = await CallAsync("list containers", t => _client.Containers.ListContainersAsync(
                new ContainersListParameters { All = true, Filters = Filters((NodeLabel, nodeId)) }, t), cancellationToken).ConfigureAwait(false);
            _lastSeen.TryRemove(nodeId, out RuntimeNode? _);
            _claimPasswords.TryRemove(nodeId, out string? _);
            var mine = all.Where(c => Ours(c.Labels) && Label(c.Labels, NodeLabel) == nodeId).ToList();
            foreach (var c in mine) await RemoveContainerAsync(c.ID, cancellationToken).ConfigureAwait(false);
            foreach (var warm in mine.Select(c => Label(c.Labels, VolumeLabel)).OfType<string>().Distinct(StringComparer.Ordinal))
            {
                await RemoveWarmVolumeAsync(warm, cancellationToken).ConfigureAwait(false);
                _logger.LogInformation("Node {NodeId}: container and volume {Volume} (taken from the warm pool) removed", nodeId, warm);
            }
            try
            {
                var volume = await CallAsync("inspect the volume", t => _client.Volumes.InspectAsync(VolumeName(nodeId), t), cancellationToken).ConfigureAwait(false);
                if (!Ours(volume.Labels) || Label(volume.Labels, NodeLabel) != nodeId)
                    throw new ContainerEngineException($"Node {nodeId}: volume {VolumeName(nodeId)} on the engine at {_docker.Endpoint} is not this cell's; not removing it");
                await CallAsync("remove the volume", t => _client.Volumes.RemoveAsync(VolumeName(nodeId), true, t), cancellationToken).ConfigureAwait(false);
                _logger.LogInformation("Node {NodeId}: container and volume removed", nodeId);
            }
            catch (DockerApiException ex) when (DockerEngine.IsNotFound(ex))
            {
            }
        }
        finally
        {
            Changed();
        }
    }

    /// <summary>The node container's output (PostgreSQL's log), for `dingo logs`.</summary>
    public async Task<string> NodeLogsAsync(string nodeId, int tail, CancellationToken ct)
    {
        NodeIdRule.Check(nodeId);
        var container = await InspectNodeAsync(nodeId, ct).ConfigureAwait(false)
            ?? throw new InvalidOperationException($"node {nodeId} has no container on the engine at {_docker.Endpoint}");
        return await LogsAsync(container.ID, tail, ct).ConfigureAwait(false);
    }

    // ---- containers, volumes, images ----

    /// <summary>
    /// The node's container; one left under <see cref="PreviousContainerName"/> by a recreation cut short (no container of
    /// the node's name) is taken back under its name first.
    /// </summary>
    private async Task<ContainerInspectResponse?> InspectNodeAsync(string nodeId, CancellationToken ct)
    {
        if (await InspectOursAsync(nodeId, ContainerName(nodeId), ct).ConfigureAwait(false) is { } c) return c;
        if (await InspectOursAsync(nodeId, PreviousContainerName(nodeId), ct).ConfigureAwait(false) is not { } previous) return null;
        _logger.LogWarning("Node {NodeId}: its container was being replaced when the cell stopped; taking the old one back", nodeId);
        await CallAsync("rename the old container back", async t =>
        {
            await _client.Containers.RenameContainerAsync(previous.ID, new ContainerRenameParameters { NewName = ContainerName(nodeId) }, t).ConfigureAwait(false);
            return true;
        }, ct).ConfigureAwait(false);
        Changed();
        return await InspectOursAsync(nodeId, ContainerName(nodeId), ct).ConfigureAwait(false);
    }

    /// <summary>A node container by name: null when there is none, an error when that name is another platform's or cell's.</summary>
    private async Task<ContainerInspectResponse?> InspectOursAsync(string nodeId, string name, CancellationToken ct, TimeSpan? timeout = null)
    {
        try
        {
            var c = await CallAsync("inspect the container", t => _client.Containers.InspectContainerAsync(name, t), ct, timeout).ConfigureAwait(false);
            // A container of that name that is not ours (another platform on the engine) is a conflict, not our node.
            if (Label(c.Config.Labels, PlatformLabel) != _docker.Platform || Label(c.Config.Labels, CellLabel) != _options.CellId)
                throw new ContainerEngineException($"Node {nodeId}: container {name} on the engine at {_docker.Endpoint} belongs to platform {Label(c.Config.Labels, PlatformLabel)}, cell {Label(c.Config.Labels, CellLabel)}; not touching it");
            return Label(c.Config.Labels, NodeLabel) == nodeId && Label(c.Config.Labels, KindLabel) == "node" ? c : null;
        }
        catch (DockerContainerNotFoundException)
        {
            return null;
        }
        catch (DockerApiException ex) when (DockerEngine.IsNotFound(ex))
        {
            return null;
        }
    }

    /// <summary>An old container a recreation made its successor for but did not remove (the cell stopped in between).</summary>
    private async Task RemovePreviousContainerAsync(string nodeId, CancellationToken ct)
    {
        if (await InspectOursAsync(nodeId, PreviousContainerName(nodeId), ct).ConfigureAwait(false) is { } previous)
            await RemoveContainerAsync(previous.ID, ct).ConfigureAwait(false);
    }

    /// <param name="volume">a warm pool entry's volume the node took; null: the node's own</param>
    /// <param name="claimed">taken from the warm pool: the first start gives the superuser its password</param>
    private async Task<string> CreateNodeContainerAsync(NodeLaunchSpec spec, NodeLimits limits, CancellationToken ct, string? volume = null, bool claimed = false)
    {
        var labels = Labels(spec);
        labels[KindLabel] = "node";
        if (volume is not null && volume != VolumeName(spec.NodeId)) labels[VolumeLabel] = volume;
        if (claimed) labels[ClaimLabel] = "1";
        labels["dingo.port"] = spec.Port.ToString(CultureInfo.InvariantCulture);
        labels[MemoryLabel] = Memory(limits);
        labels[CpusLabel] = Cpus(limits);
        var parameters = new CreateContainerParameters
        {
            Name = ContainerName(spec.NodeId),
            Image = _docker.Image,
            User = _docker.User,
            Cmd = ["/bin/sh", "-c", NodeScript],
            // PGPORT: the port the image's own HEALTHCHECK (deploy/images/postgres) asks; PostgreSQL takes its port from
            // the node's configuration, which says the same.
            Env = ["PGDATA=" + PgData, "PGPORT=" + spec.Port.ToString(CultureInfo.InvariantCulture)],
            Labels = labels,
            Healthcheck = NodeHealthcheck(spec.Port),
            // SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for every client to leave).
            StopSignal = "SIGINT",
            StopTimeout = _docker.StopTimeout,
            HostConfig = HostConfig(volume ?? VolumeName(spec.NodeId), limits, MadeCpus(limits)),
        };
        try
        {
            var created = await CallAsync("create the container", t => _client.Containers.CreateContainerAsync(parameters, t), ct).ConfigureAwait(false);
            return created.ID;
        }
        catch (DockerApiException ex) when (ex.StatusCode == System.Net.HttpStatusCode.Conflict)
        {
            // Made by an earlier attempt that did not hear back: that one is the node's container.
            return (await InspectNodeAsync(spec.NodeId, ct).ConfigureAwait(false))?.ID
                   ?? throw new ContainerEngineException($"Node {spec.NodeId}: the engine refused to create {ContainerName(spec.NodeId)}: {DockerEngine.Said(ex)}", ex);
        }
        catch (DockerImageNotFoundException ex)
        {
            _imageCheckedAt = DateTime.MinValue;
            throw ImageMissing(ex.Message, ex);
        }
    }

    /// <summary>
    /// The engine's health check of a node container: PostgreSQL accepts connections on the node's socket (a standby
    /// does too; crash recovery and a hung postmaster do not). It is what `docker ps` and an operator's container
    /// monitoring show; the HA loop, which asks PostgreSQL itself every pass, never acts on it. Set by the cell on every
    /// node container, so it holds for any image that has PostgreSQL where the image contract puts it (docs/docker.md),
    /// whether or not the image declares one.
    /// </summary>
    internal static HealthConfig NodeHealthcheck(int port) => new()
    {
        Test = ["CMD", "/usr/lib/postgresql/15/bin/pg_isready", "-q", "-h", "/var/run/postgresql", "-p", port.ToString(CultureInfo.InvariantCulture), "-t", "3"],
        Interval = TimeSpan.FromSeconds(10),
        Timeout = TimeSpan.FromSeconds(5),
        // No start period: a node container starts on complete data (restores and clones run in tool containers), and
        // three failures 10 s apart are grace enough for crash recovery; a node that takes longer is not serving.
        Retries = 3,
    };

    /// <summary>The volume holding a node container's data: a warm pool entry's it took, or the node's own.</summary>
    private static string VolumeOf(ContainerInspectResponse container) =>
        Label(container.Config.Labels, VolumeLabel) ?? VolumeName(Label(container.Config.Labels, NodeLabel) ?? throw new InvalidOperationException($"container {container.Name} has no node label"));

    private HostConfig HostConfig(string volume, NodeLimits limits, double? cpus = null) => new()
    {
        // Host networking: PostgreSQL binds the cell's address and the node's port itself (docs/docker.md).
        NetworkMode = "host",
        Mounts = [new Mount { Type = "volume", Source = volume, Target = DataMount }],
        Memory = limits.MemoryBytes,
        NanoCPUs = (long)((cpus ?? limits.Cpus) * 1_000_000_000),
        // The HA loop restarts a dead node, deciding first whether it may lead (see the class summary).
        RestartPolicy = new RestartPolicy { Name = RestartPolicyKind.No },
        // PostgreSQL's output is the container's log: bounded, as a process cell's postgres.log is. "json-file" is
        // Docker's own driver and podman's alias of k8s-file; both roll past max-size.
        LogConfig = new LogConfig
        {
            Type = "json-file",
            // In bytes: a unit would be read as 1000 by podman and 1024 by Docker.
            Config = new Dictionary<string, string> { ["max-size"] = Math.Max(64 * 1024, _options.LogMaxBytes).ToString(CultureInfo.InvariantCulture) },
        },
    };

    private async Task StopContainerAsync(ContainerInspectResponse container, CancellationToken ct)
    {
        if (Label(container.Config.Labels, NodeLabel) is { } stopping) _access.Forget(stopping);
        if (!container.State.Running) return;
        var seconds = (uint)Math.Max(1, _docker.StopTimeout.TotalSeconds);
        await CallAsync("stop the container", t => _client.Containers.StopContainerAsync(container.ID, new ContainerStopParameters { WaitBeforeKillSeconds = seconds }, t),
            ct, _docker.StopTimeout + TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        _logger.LogInformation("Node {NodeId}: container {Container} stopped (fast shutdown)", Label(container.Config.Labels, NodeLabel), Short(container.ID));
    }

    private async Task RemoveContainerAsync(string id, CancellationToken ct)
    {
        _allowance?.Forget(id);
        try
        {
            await CallAsync("remove a container", t => _client.Containers.RemoveContainerAsync(id, new ContainerRemoveParameters { Force = true, RemoveVolumes = true }, t), ct).ConfigureAwait(false);
        }
        catch (DockerContainerNotFoundException)
        {
        }
        catch (DockerApiException ex) when (DockerEngine.IsNotFound(ex))
        {
        }
    }

    /// <summary>Leftovers of a tool cut short (the cell died mid-clone): it must not go on writing beside what comes next.</summary>
    private async Task RemoveToolContainersAsync(string nodeId, CancellationToken ct)
    {
        var tools = await CallAsync("list containers", t => _client.Containers.ListContainersAsync(
            new ContainersListParameters { All = true, Filters = Filters((NodeLabel, nodeId), (KindLabel, "tool")) }, t), ct).ConfigureAwait(false);
        foreach (var tool in tools.Where(t => Ours(t.Labels) && Label(t.Labels, NodeLabel) == nodeId && Label(t.Labels, KindLabel) == "tool"))
            await RemoveContainerAsync(tool.ID, ct).ConfigureAwait(false);
    }

    private async Task EnsureVolumeAsync(NodeLaunchSpec spec, CancellationToken ct)
    {
        try
        {
            var existing = await CallAsync("inspect the volume", t => _client.Volumes.InspectAsync(VolumeName(spec.NodeId), t), ct).ConfigureAwait(false);
            if (Label(existing.Labels, NodeLabel) != spec.NodeId || Label(existing.Labels, CellLabel) != _options.CellId || Label(existing.Labels, PlatformLabel) != _docker.Platform)
                throw new ContainerEngineException($"Node {spec.NodeId}: volume {VolumeName(spec.NodeId)} on the engine at {_docker.Endpoint} is not this cell's; not touching it");
            return;
        }
        catch (DockerApiException ex) when (DockerEngine.IsNotFound(ex))
        {
        }
        await CallAsync("create the volume", t => _client.Volumes.CreateAsync(new VolumesCreateParameters { Name = VolumeName(spec.NodeId), Labels = Labels(spec) }, t), ct).ConfigureAwait(false);
    }

    /// <summary>The image must be on the engine; pulled once when allowed (`dingo.cell.docker.pull`).</summary>
    private async Task EnsureImageAsync(CancellationToken ct)
    {
        if (DateTime.UtcNow - _imageCheckedAt < TimeSpan.FromMinutes(1)) return;
        if (!await ImagePresentAsync(ct).ConfigureAwait(false))
        {
            if (_docker.Pull == "never") throw ImageMissing("dingo.cell.docker.pull is \"never\"", null);
            _logger.LogInformation("image {Image} is not on the engine: pulling it", _docker.Image);
            string? pullError = null;
            try
            {
                await CallAsync("pull the image", async t =>
                {
                    await _client.Images.CreateImageAsync(new ImagesCreateParameters { FromImage = _docker.Image }, null,
                        new Progress<JSONMessage>(m => pullError ??= m.ErrorMessage is { Length: > 0 } e ? e : null), t).ConfigureAwait(false);
                    return true;
                }, ct, TimeSpan.FromMinutes(10)).ConfigureAwait(false);
            }
            catch (DockerApiException ex)
            {
                pullError = DockerEngine.Said(ex);
            }
            if (!await ImagePresentAsync(ct).ConfigureAwait(false)) throw ImageMissing("pulling it failed: " + (pullError ?? "the engine did not say why"), null);
        }
        _imageCheckedAt = DateTime.UtcNow;
    }

    private async Task<bool> ImagePresentAsync(CancellationToken ct)
    {
        try
        {
            await CallAsync("inspect the image", t => _client.Images.InspectImageAsync(_docker.Image, t), ct).ConfigureAwait(false);
            return true;
        }
        catch (DockerImageNotFoundException)
        {
            return false;
        }
        catch (DockerApiException ex) when (DockerEngine.IsNotFound(ex))
        {
            return false;
        }
    }

    private ContainerEngineException ImageMissing(string why, Exception? inner) =>
        new($"image {_docker.Image} is missing on the engine at {_docker.Endpoint} ({why}): build it with deploy/images/build-local.sh, or load or pull it", inner);

    // ---- one-shot tools ----

    private sealed record NodeFile(string Path, string Content, UnixFileMode Mode = UnixFileMode.UserRead | UnixFileMode.UserWrite);

    private sealed record ToolResult(long ExitCode, string Output);

    /// <summary>Runs a script in a one-shot container of the node's image on the node's volume, with files placed first.</summary>
    /// <param name="volume">the volume to run on; null: the node's own</param>
    private async Task<ToolResult> RunToolAsync(NodeLaunchSpec spec, string tool, string script, IReadOnlyDictionary<string, string> env,
        IReadOnlyList<NodeFile> files, NodeLimits limits, CancellationToken ct, string? volume = null)
    {
        await RemoveToolContainersAsync(spec.NodeId, ct).ConfigureAwait(false);
        var labels = Labels(spec);
        labels[KindLabel] = "tool";
        labels["dingo.tool"] = tool;
        if (volume is not null) labels[VolumeLabel] = volume;
        return await RunOneShotAsync($"{ContainerName(spec.NodeId)}-{tool}", tool, labels, script, env, files,
            HostConfig(volume ?? VolumeName(spec.NodeId), limits), $"Node {spec.NodeId}", ct).ConfigureAwait(false);
    }

    /// <summary>A one-shot container: created, files uploaded, started, waited for, its last output read, removed.</summary>
    private async Task<ToolResult> RunOneShotAsync(string name, string tool, Dictionary<string, string> labels, string script,
        IReadOnlyDictionary<string, string> env, IReadOnlyList<NodeFile> files, HostConfig host, string forWhom, CancellationToken ct)
    {
        var created = await CallAsync("create a tool container", t => _client.Containers.CreateContainerAsync(new CreateContainerParameters
        {
            Name = name,
            Image = _docker.Image,
            User = _docker.User,
            Cmd = ["/bin/sh", "-c", script],
            Env = env.Select(e => $"{e.Key}={e.Value}").ToList(),
            Labels = labels,
            HostConfig = host,
        }, t), ct).ConfigureAwait(false);
        try
        {
            // Files go in before the tool starts: no secret ever passes a command line or the environment.
            await UploadAsync(created.ID, files, ct).ConfigureAwait(false);
            await CallAsync("start a tool container", t => _client.Containers.StartContainerAsync(created.ID, new ContainerStartParameters(), t), ct).ConfigureAwait(false);
            var exit = await WaitExitAsync(created.ID, $"wait for {tool}", ct).ConfigureAwait(false);
            var output = await LogsAsync(created.ID, 20, ct).ConfigureAwait(false);
            return new ToolResult(exit, output);
        }
        finally
        {
            try
            {
                await RemoveContainerAsync(created.ID, CancellationToken.None).ConfigureAwait(false);
            }
            catch (ContainerEngineException ex)
            {
                _logger.LogWarning("{Whom}: could not remove the {Tool} container (the next step will): {Error}", forWhom, tool, ex.Message);
            }
        }
    }

    private Dictionary<string, string> SourceEnvironment(ReplicationSource source)
    {
        var env = new Dictionary<string, string>
        {
            ["PGHOST"] = source.Host,
            ["PGPORT"] = source.Port.ToString(CultureInfo.InvariantCulture),
            ["PGUSER"] = source.Credentials.Username,
            ["PGPASSFILE"] = SettingsDir + "/.source.pgpass",
            ["PGCONNECT_TIMEOUT"] = "10",
            // The source's certificate is checked against the platform CA for the host connected to.
            ["PGSSLMODE"] = _access.CaPem is null ? "prefer" : "verify-full",
        };
        if (_access.CaPem is not null)
        {
            env["PGSSLROOTCERT"] = $"{SettingsDir}/{NodeTlsFiles.CaFile}";
            env["PGSSLCERT"] = $"{SettingsDir}/{NodeTlsFiles.ClientCertFile}";
            env["PGSSLKEY"] = $"{SettingsDir}/{NodeTlsFiles.ClientKeyFile}";
        }
        return env;
    }

    private List<NodeFile> SourceFiles(ReplicationSource source)
    {
        var files = new List<NodeFile> { new(".source.pgpass", Passfile(source.Credentials)) };
        if (_access.CaPem is { } ca) files.Add(new NodeFile(NodeTlsFiles.CaFile, ca));
        if (_access.ClientCertificate() is { } client)
        {
            files.Add(new NodeFile(NodeTlsFiles.ClientKeyFile, client.KeyPem));
            files.Add(new NodeFile(NodeTlsFiles.ClientCertFile, client.CertificatePem));
        }
        return files;
    }

    private static InvalidOperationException ToolFailure(string nodeId, string tool, ToolResult result) =>
        new($"Node {nodeId}: {tool} failed with exit code {result.ExitCode}: {LastLines(result.Output)}");

    // ---- files in the volume ----

    /// <summary>Writes files into the container's /etc/dingo, owned by the PostgreSQL user, through the archive API.</summary>
    private async Task UploadAsync(string containerId, IReadOnlyList<NodeFile> files, CancellationToken ct)
    {
        if (files.Count == 0) return;
        using var tar = new MemoryStream();
        await using (var writer = new TarWriter(tar, TarEntryFormat.Pax, leaveOpen: true))
        {
            var now = DateTimeOffset.UtcNow;
            await writer.WriteEntryAsync(new PaxTarEntry(TarEntryType.Directory, SettingsDir.TrimStart('/') + "/")
            {
                Uid = _user.Uid, Gid = _user.Gid, Mode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, ModificationTime = now,
            }, ct).ConfigureAwait(false);
            foreach (var file in files)
            {
                var entry = new PaxTarEntry(TarEntryType.RegularFile, SettingsDir.TrimStart('/') + "/" + file.Path)
                {
                    Uid = _user.Uid, Gid = _user.Gid, Mode = file.Mode, ModificationTime = now,
                    DataStream = new MemoryStream(Encoding.UTF8.GetBytes(file.Content)),
                };
                await writer.WriteEntryAsync(entry, ct).ConfigureAwait(false);
            }
        }
        tar.Position = 0;
        await CallAsync("write the node's settings", async t =>
        {
            await _client.Containers.ExtractArchiveToContainerAsync(containerId, new ContainerPathStatParameters { Path = "/", AllowOverwriteDirWithFile = false }, tar, t).ConfigureAwait(false);
            return true;
        }, ct).ConfigureAwait(false);
    }

    /// <summary>postgresql.conf (complete: the data directory's own is not read), pg_hba.conf, the role and the passfile.</summary>
    private List<NodeFile> SettingsFiles(NodeLaunchSpec spec, StandbyConfig? standby, NodeLimits limits)
    {
        var readable = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        var conf = new StringBuilder()
            .AppendLine("# Written by Dingo on every start; edits are overwritten.")
            .AppendLine(CultureInfo.InvariantCulture, $"hba_file = '{SettingsDir}/pg_hba.conf'")
            .AppendLine(CultureInfo.InvariantCulture, $"ident_file = '{SettingsDir}/pg_ident.conf'")
            .AppendLine(CultureInfo.InvariantCulture, $"port = {spec.Port}")
            .AppendLine(CultureInfo.InvariantCulture, $"listen_addresses = {NodeSettings.Quote(spec.ListenAddress)}")
            .AppendLine("unix_socket_directories = '/var/run/postgresql'")
            .AppendLine(CultureInfo.InvariantCulture, $"shared_buffers = '{limits.SharedBuffersBytes / 1024 / 1024}MB'")
            .AppendLine(CultureInfo.InvariantCulture, $"max_connections = {_options.MaxConnections}")
            .AppendReplicationSettings()
            // The image carries no LLVM (deploy/images): JIT stays off.
            .AppendLine("jit = off")
            .AppendLine("log_destination = 'stderr'")
            .AppendLine("logging_collector = off")
            .AppendLine(CultureInfo.InvariantCulture, $"cluster_name = {NodeSettings.Quote(spec.NodeId)}")
            // A file of its own, so a node that started before its cell knew the CA turns TLS on at a reload.
            .AppendLine(CultureInfo.InvariantCulture, $"include_if_exists = '{SettingsDir}/{NodeTlsFiles.ConfFile}'");
        // The password lives in a 0600 passfile of the PostgreSQL user, never in the settings.
        var passfile = standby?.Primary is { } primary ? Passfile(primary.Credentials) : "";
        conf.AppendStandbySettings(standby, $"{SettingsDir}/replication.pgpass", _access.CaPem is null ? null : SettingsDir);
        // SCRAM for everyone, nothing trusted; the platform's roles only from the platform's hosts.
        var access = _access.ForStart(spec.NodeId, spec.Superuser.Username, spec.ListenAddress);
        return
        [
            new NodeFile("postgresql.conf", conf.ToString(), readable),
            .. AccessFiles(access),
            new NodeFile("pg_ident.conf", "", readable),
            new NodeFile("replication.pgpass", passfile),
            new NodeFile("role", standby is null ? "primary\n" : "standby\n", readable),
        ];
    }

    /// <summary>pg_hba.conf and the node's TLS files (key 0600 in the archive itself: never a moment with another mode).</summary>
    private static List<NodeFile> AccessFiles(NodeAccessFiles access)
    {
        var files = new List<NodeFile>();
        if (access.Tls is { } tls)
        {
            files.Add(new NodeFile(NodeTlsFiles.KeyFile, tls.KeyPem));
            files.Add(new NodeFile(NodeTlsFiles.CertFile, tls.CertificatePem));
            files.Add(new NodeFile(NodeTlsFiles.CaFile, tls.CaPem));
            files.Add(new NodeFile(NodeTlsFiles.ClientKeyFile, tls.ClientKeyPem));
            files.Add(new NodeFile(NodeTlsFiles.ClientCertFile, tls.ClientCertificatePem));
            files.Add(new NodeFile(NodeTlsFiles.ConfFile, NodeTlsFiles.Conf(SettingsDir)));
        }
        files.Add(new NodeFile("pg_hba.conf", access.Hba));
        return files;
    }

    /// <summary>One libpq passfile line matching any host, port and database for this user (':' and '\' escaped).</summary>
    private static string Passfile(Dingo.Model.Credentials credentials)
    {
        static string Escape(string s) => s.Replace("\\", "\\\\", StringComparison.Ordinal).Replace(":", "\\:", StringComparison.Ordinal);
        return $"*:*:*:{Escape(credentials.Username)}:{Escape(credentials.Password)}\n";
    }

    /// <summary>
    /// `dingo logs -f`: the node container's last <paramref name="tail"/> lines, then each line as it comes, in one
    /// stream of the engine (nothing between the tail and the rest is lost or doubled), until cancelled or the
    /// container goes.
    /// </summary>
    /// <param name="since">instead of the tail: every line from this second on (a follower picking up where it left off)</param>
    /// <param name="attached">called once the engine answered with the stream: lines logged from then on are in it</param>
    public async Task FollowNodeLogsAsync(string nodeId, int tail, Action<string> line, CancellationToken ct, DateTimeOffset? since = null, Action? attached = null)
    {
        NodeIdRule.Check(nodeId);
        var container = await InspectNodeAsync(nodeId, ct).ConfigureAwait(false)
            ?? throw new InvalidOperationException($"node {nodeId} has no container on the engine at {_docker.Endpoint}");
        var parameters = new ContainerLogsParameters { ShowStdout = true, ShowStderr = true, Follow = true, Tail = since is null ? tail.ToString(CultureInfo.InvariantCulture) : "all" };
        if (since is { } from) parameters.Since = from.ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture);
        using var stream = await CallAsync("follow the container's logs", t => _client.Containers.GetContainerLogsAsync(container.ID, false, parameters, t), ct).ConfigureAwait(false);
        attached?.Invoke();
        // A read waiting for the next line does not end when cancelled (DockerCellTests, fresh186: Ctrl-C left `dingo
        // logs -f` waiting on a quiet container): closing the stream ends it.
        await using var closing = ct.Register(stream.Dispose);
        var buffer = new byte[64 * 1024];
        var pending = new System.Text.StringBuilder();
        // One decoder for the whole stream: a character may be split between two reads.
        var decoder = System.Text.Encoding.UTF8.GetDecoder();
        var chars = new char[buffer.Length];
        while (!ct.IsCancellationRequested)
        {
            MultiplexedStream.ReadResult read;
            try { read = await stream.ReadOutputAsync(buffer, 0, buffer.Length, ct).ConfigureAwait(false); }
            catch (Exception ex) when (ct.IsCancellationRequested && ex is ObjectDisposedException or IOException or OperationCanceledException or HttpRequestException)
            {
                break;
            }
            if (read.EOF) break;
            pending.Append(chars, 0, decoder.GetChars(buffer, 0, read.Count, chars, 0));
            var text = pending.ToString();
            var end = text.LastIndexOf('\n');
            if (end < 0) continue;
            foreach (var complete in text[..end].Split('\n')) line(complete);
            pending.Clear().Append(text[(end + 1)..]);
        }
        if (pending.Length > 0) line(pending.ToString());
    }

    // ---- plumbing ----

    private async Task<string> LogsAsync(string containerId, int tail, CancellationToken ct)
    {
        using var stream = await CallAsync("read the container's logs", t => _client.Containers.GetContainerLogsAsync(containerId, false,
            new ContainerLogsParameters { ShowStdout = true, ShowStderr = true, Tail = tail.ToString(CultureInfo.InvariantCulture) }, t), ct).ConfigureAwait(false);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(_options.CallTimeout);
        var (stdout, stderr) = await stream.ReadOutputToEndAsync(timeout.Token).ConfigureAwait(false);
        return stdout + stderr;
    }

    private Task CallAsync(string what, Func<CancellationToken, Task> call, CancellationToken ct, TimeSpan? timeout = null) =>
        CallAsync(what, async t =>
        {
            await call(t).ConfigureAwait(false);
            return true;
        }, ct, timeout);

    /// <summary>One engine call under its own deadline; an engine that does not answer becomes a <see cref="ContainerEngineException"/>.</summary>
    private async Task<T> CallAsync<T>(string what, Func<CancellationToken, Task<T>> call, CancellationToken ct, TimeSpan? timeout = null)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(timeout ?? _options.CallTimeout);
        var began = Stopwatch.GetTimestamp();
        try
        {
            var result = await call(deadline.Token).ConfigureAwait(false);
            // A slow engine is what a slow start or clone waits on: said, with the call, for the operator (and the bench).
            if (Stopwatch.GetElapsedTime(began) is { TotalSeconds: >= 1 } took)
                _logger.LogInformation("engine call took {Ms} ms: {What}", (long)took.TotalMilliseconds, what);
            return result;
        }
        catch (Exception ex) when (ex is not DockerApiException && DockerEngine.Unreachable(ex, ct))
        {
            var why = ex is OperationCanceledException ? $"no answer within {(timeout ?? _options.CallTimeout).TotalSeconds:0.#}s" : DockerEngine.Innermost(ex);
            throw new ContainerEngineException($"container engine at {_docker.Endpoint} is unreachable (could not {what}): {why}", ex);
        }
        catch (DockerApiException ex) when ((int)ex.StatusCode >= 500 && !DockerEngine.IsNotFound(ex))
        {
            // Podman answers 500 for "no such image" in places where Docker says 404.
            var said = DockerEngine.Said(ex);
            if (said.Contains("no such image", StringComparison.OrdinalIgnoreCase) || said.Contains("image not known", StringComparison.OrdinalIgnoreCase))
                throw new DockerImageNotFoundException(System.Net.HttpStatusCode.NotFound, ex.ResponseBody);
            throw new ContainerEngineException($"container engine at {_docker.Endpoint} failed to {what}: {said}", ex);
        }
    }

    private Dictionary<string, string> Labels(NodeLaunchSpec spec) => new(StringComparer.Ordinal)
    {
        [PlatformLabel] = _docker.Platform,
        [CellLabel] = _options.CellId,
        [InstanceLabel] = spec.InstanceId,
        [NodeLabel] = spec.NodeId,
    };

    /// <summary>Label filters: this platform and this cell, plus any given.</summary>
    private Dictionary<string, IDictionary<string, bool>> Filters(params (string Key, string Value)[] more)
    {
        var labels = new Dictionary<string, bool>(StringComparer.Ordinal)
        {
            [$"{PlatformLabel}={_docker.Platform}"] = true,
            [$"{CellLabel}={_options.CellId}"] = true,
        };
        foreach (var (key, value) in more) labels[$"{key}={value}"] = true;
        return new Dictionary<string, IDictionary<string, bool>> { ["label"] = labels };
    }

    /// <summary>Labelled with this platform and this cell.</summary>
    private bool Ours(IDictionary<string, string>? labels) =>
        Label(labels, PlatformLabel) == _docker.Platform && Label(labels, CellLabel) == _options.CellId;

    private static string? Label(IDictionary<string, string>? labels, string key) =>
        labels is not null && labels.TryGetValue(key, out var value) ? value : null;

    private static string Memory(NodeLimits limits) => limits.MemoryBytes.ToString(CultureInfo.InvariantCulture);
    private static string Cpus(NodeLimits limits) => limits.Cpus.ToString(CultureInfo.InvariantCulture);
    private static string Short(string id) => id.Length > 12 ? id[..12] : id;

    private static string LastLines(string text, int count = 5)
    {
        var lines = text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return lines.Length == 0 ? "(no output)" : string.Join(" | ", lines.TakeLast(count));
    }

    public void Dispose()
    {
        _allowance?.Dispose();
        _http?.Dispose();
        _client.Dispose();
    }
}
