using Dingo.Model;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using Akka.Actor;
using Dingo.Broker;
using Dingo.Cell;
using Dingo.Config;
using Dingo.Routing;
using Dingo.Store;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Dingo.Tests.Support;

/// <summary>
/// A real platform for one test: the broker over real HTTP, cells reconciling real PostgreSQL processes,
/// all against the run's real etcd under a key prefix of its own. Disposing removes every node, its data
/// and its keys, even when the test failed.
/// </summary>
public sealed class TestPlatform : IAsyncDisposable
{
    public const string Username = "test-broker";
    public const string Password = "test-broker-password-0123456789";
    /// <summary>The operator's admin API credentials (the OSB ones above do not open /admin).</summary>
    public const string AdminUsername = "test-admin";
    public const string AdminPassword = "test-admin-password-9876543210";
    /// <summary>How a test's console asks the brokers: on loopback, with the admin credentials, plain remoting.</summary>
    public static Dingo.Membership.ConsoleAccess ConsoleAccess =>
        new("127.0.0.1", new Dingo.Membership.OperatorCredentials(AdminUsername, AdminPassword), new AkkaTlsSettings());

    private WebApplication? _broker;
    private readonly List<IHost> _cells = new();
    private readonly Dictionary<int, System.Diagnostics.Process> _cellProcesses = new();
    private readonly Dictionary<int, System.Diagnostics.Process> _brokerProcesses = new();
    private string? _seed;

    private TestPlatform(DingoSettings settings, EtcdStore store, bool ownsData)
    {
        Settings = settings;
        Store = store;
        OwnsData = ownsData;
        FreePorts.Hold(settings.Router.PortFirst);
        Http = new HttpClient { BaseAddress = new Uri(settings.Broker.Url), Timeout = TimeSpan.FromSeconds(30) };
        Http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{Username}:{Password}")));
        Http.DefaultRequestHeaders.Add("X-Broker-API-Version", "2.17");
    }

    private int _disposed;

    public DingoSettings Settings { get; }
    public EtcdStore Store { get; }
    public HttpClient Http { get; }
    public bool OwnsData { get; }
    public IReadOnlyList<IHost> Cells => _cells;
    /// <summary>The broker's Akka address, the seed cells join.</summary>
    public string Seed => _seed ?? throw new InvalidOperationException("the broker has not started");

    public static string RepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "hocon", "dingo.conf"))) dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException("cannot find the repository root (hocon/dingo.conf) above " + AppContext.BaseDirectory);
    }

    /// <summary>
    /// Settings for a fresh platform: its own data folder, key prefix, broker port and port block. The run's
    /// shared etcd unless <paramref name="etcdEndpoint"/> names another (a test's own etcd).
    /// </summary>
    /// <param name="runtime">"process" (local PostgreSQL processes) or "docker" (containers on the run's podman, <see cref="TestPodman"/>)</param>
    public static DingoSettings NewSettings(int quota = 10, string extra = "", string? etcdEndpoint = null, string runtime = "process")
    {
        var cellRuntime = runtime switch
        {
            "process" => "",
            // The platform label defaults to the etcd prefix: platforms side by side on one podman never see each other's nodes.
            "docker" => $$"""dingo.cell { runtime = docker, docker { endpoint = "{{TestPodman.Endpoint}}", image = "{{TestPodman.Image}}", pull = never, stop-timeout = 10s } }""",
            _ => throw new ArgumentException($"unknown runtime {runtime}", nameof(runtime)),
        };
        var (pubFirst, pubLast, nodeFirst, nodeLast) = FreePorts.Block();
        var data = Path.Combine(Path.GetTempPath(), "dingo-tests", Guid.NewGuid().ToString("N")[..12]);
        var overrides = $$"""
            dingo {
              data-dir = "{{data}}"
              etcd.endpoints = ["{{etcdEndpoint ?? TestEtcd.ClientUrl}}"]
              etcd.prefix = "/t-{{Guid.NewGuid():N}}"
              broker { url = "http://127.0.0.1:{{FreePorts.One()}}", username = "{{Username}}", password = "{{Password}}", admin-username = "{{AdminUsername}}", admin-password = "{{AdminPassword}}", instance-quota = {{quota}}, provision-timeout = 240s }
              # Test platforms run side by side with the same cell names: the kernel path's per-cell nftables tables
              # would be shared, so they route in user space (KernelModeTests covers the kernel path).
              router { port-range-first = {{pubFirst}}, port-range-last = {{pubLast}}, leader-wait = 3s, mode = userspace }
              # Cells of test platforms share 127.0.0.1: no health port unless a test gives its cell one
              # (DINGO_CELL_HEALTH_PORT; HealthEndpointTests).
              # No warm pool: dozens of platforms each filling one would cost the suite a minute of initdb (WarmPoolTests
              # and LifecycleTests' warm provision cover it).
              # Replicas clone at once: tests wait for them on cells busy with other tests' nodes (CloneSettleTests
              # covers the wait). Nothing waits for the CPU pressure: the suite keeps the machine's cores full
              # (CpuPressureTests covers the check).
              cell { reconcile-interval = 500ms, lease-ttl = 6s, health-port = 0, warm-pool = 0, clone-settle = 0s, saturated-cpu-pressure = 0 }
              # First base backups at once: tests wait for them on cells that are busy with other tests' nodes
              # (FirstBackupSettleTests covers the wait).
              backups.first-backup-settle = 0s
              # The run's seal keys (Security/TestSealKey): every process of every test platform opens the same records.
              security.seal-key-file = "{{Security.TestSealKey.File}}"
              node-port-range-first = {{nodeFirst}}
              node-port-range-last = {{nodeLast}}
            }
            {{cellRuntime}}
            {{extra}}
            """;
        // Kept beside the data, so cell processes started by a test read exactly these settings.
        Directory.CreateDirectory(data);
        // Tests of settings alone start no platform that would delete it.
        RunProcesses.DeleteAtExit(data);
        File.WriteAllText(Path.Combine(data, "test.conf"), overrides);
        return DingoSettings.Load([Path.Combine(RepoRoot(), "hocon", "dingo.conf")], new Dictionary<string, string?>(), overrides);
    }

    /// <param name="ownsData">delete the platform's data and keys on dispose (default: when it made its own settings)</param>
    /// <param name="cellHealthPorts">give each in-process cell a health port of its own (<see cref="CellHealthPort"/>): its
    /// /healthz, /readyz and /metrics</param>
    /// <param name="cellServices">registrations for in-process cell-N (its number, its services), after the cell's own</param>
    public static async Task<TestPlatform> StartAsync(int cells, DingoSettings? settings = null, CancellationToken ct = default, bool? ownsData = null,
        bool cellHealthPorts = false, Action<int, IServiceCollection>? cellServices = null)
    {
        var owns = ownsData ?? settings is null;
        settings ??= NewSettings();
        var platform = new TestPlatform(settings, new EtcdStore(settings.EtcdEndpoints, settings.EtcdPrefix), owns);
        try
        {
            await platform.StartProcessesAsync(cells, cellHealthPorts, cellServices, ct);
            return platform;
        }
        catch
        {
            await platform.DisposeAsync();
            throw;
        }
    }

    /// <summary>In-process brokers and cells log warnings and worse; DINGO_TEST_LOG_LEVEL (e.g. Information) says more.</summary>
    private static void Quiet(ILoggingBuilder logging) =>
        logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss.fff "; })
            .SetMinimumLevel(Enum.TryParse<LogLevel>(Environment.GetEnvironmentVariable("DINGO_TEST_LOG_LEVEL"), ignoreCase: true, out var level) ? level : LogLevel.Warning);

    private readonly Dictionary<int, int> _cellHealthPorts = [];

    /// <summary>The health port of in-process cell-N (started with cellHealthPorts).</summary>
    public int CellHealthPort(int number) => _cellHealthPorts[number];

    private async Task StartProcessesAsync(int cells, bool cellHealthPorts, Action<int, IServiceCollection>? cellServices, CancellationToken ct)
    {
        _broker = BrokerApp.Build(Settings, akkaPort: 0, logging: Quiet);
        await _broker.StartAsync(ct);
        // The broker records the schema version as it starts (SchemaCheckService) and, in the background, the platform
        // CA (PlatformTrustService, when no node requires TLS): tests that compare etcd before and after a request must
        // not see either appear in between (fresh161: the CA landed during OsbApiTests' first rejected request).
        var deadline = DateTime.UtcNow.AddSeconds(30);
        foreach (var key in new[] { Store.Keys.Schema, Store.Keys.PlatformCa })
            while (await Store.GetRawAsync(key, ct) is null)
            {
                if (DateTime.UtcNow > deadline) throw new TimeoutException($"the broker did not record {key} within 30 s of its start");
                await Task.Delay(50, ct);
            }
        var system = _broker.Services.GetRequiredService<ActorSystem>();
        var seed = _seed = Akka.Cluster.Cluster.Get(system).SelfAddress.ToString();
        var zones = new[] { "z1", "z2", "z3" };
        for (var i = 0; i < cells; i++)
        {
            var healthPort = cellHealthPorts ? FreePorts.One() : 0;
            if (cellHealthPorts) _cellHealthPorts[i + 1] = healthPort;
            var cellSettings = Settings with { Cell = Settings.Cell with { Id = $"cell-{i + 1}", Zone = zones[i % zones.Length], HealthPort = healthPort } };
            var number = i + 1;
            var host = CellApp.Build(cellSettings, [seed], Quiet, cellServices is null ? null : services => cellServices(number, services));
            await host.StartAsync(ct);
            _cells.Add(host);
        }
    }

    private static readonly string[] Zones = ["z1", "z2", "z3"];

    /// <summary>
    /// Starts cells as OS processes and waits until each has registered in etcd. A provision sent before that is
    /// placed on the cells registered so far: a cluster then finds too few cells and fails, which is right for the
    /// platform and wrong for a test that meant to have them all.
    /// </summary>
    public async Task StartCellProcessesAsync(params int[] numbers)
    {
        foreach (var n in numbers) StartCellProcess(n);
        var ids = numbers.Select(n => $"cell-{n}").ToHashSet(StringComparer.Ordinal);
        await Eventually.UntilAsync(async () =>
        {
            var died = numbers.Where(n => _cellProcesses[n].HasExited).ToList();
            if (died.Count > 0) throw new InvalidOperationException($"cell process(es) {string.Join(", ", died)} exited while starting; see cell-N.log in {Settings.DataDir}");
            var registered = (await Store.ListAsync<Dingo.Model.CellInfo>(Store.Keys.Cells, CancellationToken.None)).Select(c => c.Value.Id);
            return ids.IsSubsetOf(registered);
        }, TimeSpan.FromSeconds(90), $"cells {string.Join(", ", ids)} registered in etcd");
    }

    /// <summary>
    /// The cell program cell processes run: this test build's copy, or (set by bench/Chaos) the ReadyToRun-compiled one
    /// `./dingo up` runs (<see cref="Dingo.Cli.ReadyToRun"/>).
    /// </summary>
    public static string CellDll { get; set; } = Path.Combine(AppContext.BaseDirectory, "Dingo.Cell.dll");

    /// <summary>Starts cell-N as a separate OS process (so a test can kill -9 it with its PostgreSQL).</summary>
    /// <param name="environment">variables set for this cell only (a health port, systemd's NOTIFY_SOCKET)</param>
    public void StartCellProcess(int number, IReadOnlyDictionary<string, string>? environment = null)
    {
        var dll = CellDll;
        var psi = new System.Diagnostics.ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { dll, "--config", Path.Combine(RepoRoot(), "hocon", "dingo.conf"), "--config", Path.Combine(Settings.DataDir, "test.conf"), "--seed", _seed! })
            psi.ArgumentList.Add(a);
        psi.Environment["DINGO_CELL_ID"] = $"cell-{number}";
        psi.Environment["DINGO_CELL_ZONE"] = Zones[(number - 1) % Zones.Length];
        foreach (var (key, value) in environment ?? new Dictionary<string, string>()) psi.Environment[key] = value;
        var log = new StreamWriter(Path.Combine(Settings.DataDir, $"cell-{number}.log"), append: true) { AutoFlush = true };
        var process = System.Diagnostics.Process.Start(psi)!;
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.WriteLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.WriteLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        _cellProcesses[number] = process;
    }

    /// <summary>
    /// Starts another broker as an OS process that joins this platform's Akka cluster (sharing the instance actors
    /// through sharding) and serves the OSB API on its own URL, which it returns.
    /// </summary>
    /// <param name="environment">variables set for this broker only (DINGO_LOG_FORMAT, say)</param>
    public Uri StartBrokerProcess(int number, IReadOnlyDictionary<string, string>? environment = null)
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "Dingo.Broker.dll");
        var psi = new System.Diagnostics.ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { dll, "--config", Path.Combine(RepoRoot(), "hocon", "dingo.conf"), "--config", Path.Combine(Settings.DataDir, "test.conf") })
            psi.ArgumentList.Add(a);
        var url = new Uri($"http://127.0.0.1:{FreePorts.One()}");
        psi.Environment["DINGO_BROKER_URL"] = url.ToString().TrimEnd('/');
        psi.Environment["DINGO_AKKA_PORT"] = FreePorts.One().ToString(System.Globalization.CultureInfo.InvariantCulture);
        psi.Environment["DINGO_AKKA_SEEDS"] = _seed!;
        foreach (var (key, value) in environment ?? new Dictionary<string, string>()) psi.Environment[key] = value;
        var log = new StreamWriter(Path.Combine(Settings.DataDir, $"broker-{number}.log"), append: true) { AutoFlush = true };
        var process = System.Diagnostics.Process.Start(psi)!;
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.WriteLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.WriteLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        _brokerProcesses[number] = process;
        return url;
    }

    /// <summary>kill -9 of a broker process.</summary>
    public void KillBroker(int number)
    {
        _brokerProcesses.Remove(number, out var process);
        try { process?.Kill(); process?.WaitForExit(5000); } catch (InvalidOperationException) { }
    }

    /// <summary>An HTTP client for another broker of this platform, with the same credentials.</summary>
    public static HttpClient ClientFor(Uri url)
    {
        var http = new HttpClient { BaseAddress = url, Timeout = TimeSpan.FromSeconds(30) };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{Username}:{Password}")));
        http.DefaultRequestHeaders.Add("X-Broker-API-Version", "2.17");
        return http;
    }

    /// <summary>
    /// kill -9 of a whole cell: its agent and every PostgreSQL process under its data, all at once (nothing of the
    /// cell may keep serving while the rest dies); returns when they are gone. The cell's fencing guard, a process of its
    /// own session, lives on as it does after a crash (systemd's KillMode=process), unless <paramref name="guardToo"/>:
    /// then everything of the cell on the host goes, as when the host is lost.
    /// </summary>
    public void KillCell(int number, bool guardToo = false)
    {
        var cell = $"cell-{number}";
        var spare = guardToo ? null : Path.Combine(Path.GetFullPath(Settings.DataDir), "cells", cell, "guard") + "/";
        var postgres = PostgresPidsOf(cell, spare).ToList();
        _cellProcesses.Remove(number, out var process);
        try { process?.Kill(); } catch (InvalidOperationException) { }
        foreach (var pid in postgres) KillNow(pid);
        // A postmaster forking at that moment: sweep once more.
        foreach (var pid in PostgresPidsOf(cell, spare)) KillNow(pid);
        try { process?.WaitForExit(5000); } catch (InvalidOperationException) { }
    }

    /// <summary>PIDs of the cell processes this platform started (StartCellProcess) and that still run.</summary>
    public IReadOnlyList<int> CellProcessIds() => _cellProcesses.Values.Where(p => !p.HasExited).Select(p => p.Id).ToList();

    /// <summary>kill -9 of cell-N's process alone: its PostgreSQL nodes (containers) go on running, as after a cell crash.</summary>
    public void KillCellProcessOnly(int number)
    {
        _cellProcesses.Remove(number, out var process);
        try { process?.Kill(); } catch (InvalidOperationException) { }
        try { process?.WaitForExit(5000); } catch (InvalidOperationException) { }
    }

    /// <summary>PIDs of every PostgreSQL process of one node of cell-N (the process runtime: their working directory is its data).</summary>
    public IReadOnlyList<int> PostgresPidsOfNode(int cell, string nodeId) =>
        PostgresPidsUnder(Path.Combine(Path.GetFullPath(Settings.DataDir), "cells", $"cell-{cell}", "nodes", nodeId) + "/").ToList();

    /// <param name="spare">processes whose working directory is under this folder are left out (the guard's)</param>
    private IEnumerable<int> PostgresPidsOf(string cellId, string? spare = null) =>
        PostgresPidsUnder(Path.Combine(Path.GetFullPath(Settings.DataDir), "cells", cellId) + "/", spare);

    private static IEnumerable<int> PostgresPidsUnder(string dir, string? spare = null)
    {
        foreach (var proc in Directory.GetDirectories("/proc").Select(Path.GetFileName))
        {
            if (!int.TryParse(proc, out var pid)) continue;
            string cwd;
            try { cwd = new DirectoryInfo($"/proc/{pid}/cwd").ResolveLinkTarget(false)?.FullName ?? ""; }
            catch (Exception) { continue; }
            if ((cwd + "/").StartsWith(dir, StringComparison.Ordinal) && (spare is null || !(cwd + "/").StartsWith(spare, StringComparison.Ordinal))) yield return pid;
        }
    }

    private static void KillNow(int pid)
    {
        try { System.Diagnostics.Process.GetProcessById(pid).Kill(); } catch (ArgumentException) { } catch (InvalidOperationException) { }
    }

    /// <summary>Stops cells (their PostgreSQL nodes stop, data kept) and the broker, as Ctrl-C on `dingo up` does.</summary>
    public async Task StopAsync()
    {
        foreach (var number in _brokerProcesses.Keys.ToList()) KillBroker(number);
        foreach (var number in _cellProcesses.Keys.ToList())
        {
            var p = _cellProcesses[number];
            _ = kill(p.Id, 15);
            if (!p.WaitForExit(30_000)) KillCell(number, guardToo: true);
            _cellProcesses.Remove(number);
        }
        foreach (var cell in _cells)
        {
            try { await cell.StopAsync(); } finally { cell.Dispose(); }
        }
        _cells.Clear();
        if (_broker is not null)
        {
            try { await _broker.StopAsync(); } finally { await _broker.DisposeAsync(); }
            _broker = null;
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        try { await StopAsync(); }
        catch (Exception ex) { Console.Error.WriteLine($"test platform stop: {ex.Message}"); }
        FreePorts.Release(Settings.Router.PortFirst);
        Http.Dispose();
        if (OwnsData)
        {
            // Cell process logs outlive the platform, for reading after a failure.
            var logs = Path.Combine(Path.GetTempPath(), "dingo-test-logs");
            Directory.CreateDirectory(logs);
            foreach (var log in Directory.Exists(Settings.DataDir) ? Directory.GetFiles(Settings.DataDir, "cell-*.log") : [])
                File.Copy(log, Path.Combine(logs, $"{Path.GetFileName(Settings.DataDir)}-{Path.GetFileName(log)}"), overwrite: true);
            await DestroyDataAsync(Settings);
        }
        await Store.DisposeAsync();
    }

    /// <summary>Kills any PostgreSQL left under the data folder or in the platform's containers, deletes them and the platform's etcd keys.</summary>
    public static async Task DestroyDataAsync(DingoSettings settings)
    {
        if (settings.Cell.Runtime == "docker") await TestPodman.RemovePlatformAsync(settings.Cell.Docker.Platform);
        var data = Path.GetFullPath(settings.DataDir);
        if (Directory.Exists(data))
        {
            foreach (var pidFile in Directory.GetFiles(data, "postmaster.pid", SearchOption.AllDirectories))
            {
                var first = File.ReadLines(pidFile).FirstOrDefault();
                if (int.TryParse(first, out var pid))
                {
                    try { System.Diagnostics.Process.GetProcessById(pid).Kill(); } catch (ArgumentException) { } catch (InvalidOperationException) { }
                }
            }
            for (var attempt = 0; attempt < 5; attempt++)
            {
                try { Directory.Delete(data, recursive: true); break; }
                catch (IOException) { await Task.Delay(300); }
            }
        }
        await using var store = new EtcdStore(settings.EtcdEndpoints, settings.EtcdPrefix);
        await store.DeletePrefixAsync(settings.EtcdPrefix + "/", CancellationToken.None);
    }

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern int kill(int pid, int sig);

    // ---- OSB helpers ----

    public static string ProvisionBody(string? planId = null, object? parameters = null) => new JsonObject
    {
        ["service_id"] = Model.Catalog.ServiceId,
        ["plan_id"] = planId ?? Model.Catalog.SoloPlanId,
        ["organization_guid"] = "org-1",
        ["space_guid"] = "space-1",
        ["parameters"] = parameters is null ? new JsonObject() : JsonNode.Parse(System.Text.Json.JsonSerializer.Serialize(parameters)),
    }.ToJsonString();

    public static AuthenticationHeaderValue AdminAuthorization =>
        new("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{AdminUsername}:{AdminPassword}")));

    public Task<HttpResponseMessage> PutJsonAsync(string path, string body) =>
        Http.PutAsync(path, new StringContent(body, Encoding.UTF8, "application/json"));

    public async Task<(int Status, JsonObject Body)> SendAsync(HttpMethod method, string path, string? body = null, CancellationToken ct = default)
    {
        using var request = new HttpRequestMessage(method, path);
        if (body is not null) request.Content = new StringContent(body, Encoding.UTF8, "application/json");
        // /admin takes the operator's credentials only.
        if (path.StartsWith("/admin", StringComparison.Ordinal)) request.Headers.Authorization = AdminAuthorization;
        using var response = await Http.SendAsync(request, ct);
        var text = await response.Content.ReadAsStringAsync(ct);
        var json = text.Length == 0 ? new JsonObject() : JsonNode.Parse(text) as JsonObject ?? new JsonObject();
        return ((int)response.StatusCode, json);
    }

    /// <summary>
    /// Waits until the router of every in-process cell has applied a route for <paramref name="port"/> that satisfies
    /// <paramref name="routed"/>; returns how long that took. Routers converge one by one (a leader change within
    /// milliseconds each, a replica's status at the next resync): a client meets whichever router the kernel picks.
    /// </summary>
    public async Task<TimeSpan> UntilEveryRouterAsync(int port, Func<Route, bool> routed, TimeSpan timeout, string what)
    {
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        var routers = _cells.Select(c => c.Services.GetRequiredService<IRouteDataPath>()).ToList();
        await Eventually.UntilAsync(
            () => Task.FromResult(routers.All(r => r.Applied.FirstOrDefault(x => x.Port == port) is { } route && routed(route))), timeout,
            $"{what} (routers of {routers.Count} cell(s))");
        return System.Diagnostics.Stopwatch.GetElapsedTime(started);
    }

    /// <summary>Where each in-process cell's router last applied a port to (a test's failure message).</summary>
    public string RouterTargets(int port) => string.Join(", ", _cells.Select((c, i) =>
        $"cell {i + 1}: {(c.Services.GetRequiredService<IRouteDataPath>().Applied.FirstOrDefault(x => x.Port == port) is { } r ? r.Target?.ToString() ?? "no primary" : "no route")}"));

    /// <summary>Polls last_operation until it leaves `in progress`; returns the final body.</summary>
    public async Task<JsonObject> WaitForOperationAsync(string instanceId, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        JsonObject last = new();
        while (DateTime.UtcNow < deadline)
        {
            var (status, body) = await SendAsync(HttpMethod.Get, $"/v2/service_instances/{instanceId}/last_operation");
            Assert.Equal(200, status);
            last = body;
            if ((string?)body["state"] != "in progress") return body;
            await Task.Delay(200);
        }
        throw new TimeoutException($"operation on {instanceId} still in progress after {timeout}: {last.ToJsonString()}\n{await InstanceStoryAsync(instanceId)}");
    }

    /// <summary>
    /// What an operation that never finished needs explained (the platform's data, logs included, goes with the test):
    /// each node's last status and the cell-process log lines that name the instance or its nodes.
    /// </summary>
    public async Task<string> InstanceStoryAsync(string instanceId, int linesPerCell = 25)
    {
        var story = new StringBuilder();
        try
        {
            var nodes = (await Store.ListAsync<Dingo.Model.NodeSpec>(Store.Keys.Nodes(instanceId), CancellationToken.None)).Select(n => n.Value).ToList();
            var statuses = (await Store.ListAsync<Dingo.Model.NodeStatus>(Store.Keys.Statuses(instanceId), CancellationToken.None)).Select(n => n.Value).ToList();
            foreach (var n in nodes)
            {
                var st = statuses.FirstOrDefault(x => x.NodeId == n.NodeId);
                story.AppendLine($"node {n.NodeId} on {n.CellId}: {(st is null ? "no status" : $"{st.State} {st.Role}: {st.Detail}")}");
            }
            var names = nodes.Select(n => n.NodeId).Append(instanceId).ToList();
            foreach (var log in Directory.EnumerateFiles(Settings.DataDir, "cell-*.log").Order(StringComparer.Ordinal))
            {
                string[] lines;
                using (var stream = new FileStream(log, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
                using (var reader = new StreamReader(stream))
                    lines = (await reader.ReadToEndAsync()).Split('\n');
                foreach (var line in lines.Where(l => names.Any(n => l.Contains(n, StringComparison.Ordinal))).TakeLast(linesPerCell))
                    story.AppendLine($"{Path.GetFileNameWithoutExtension(log)}: {line.TrimEnd()}");
            }
        }
        catch (Exception e) { story.AppendLine($"(could not read the instance's story: {e.Message})"); }
        return story.ToString();
    }

    /// <summary>
    /// The last <paramref name="count"/> HA and runtime lines of every cell's log about the instance, in time order and
    /// without the steady ones (a leader holding its key, a replica streaming): what a failed wait's output shows, since
    /// a CI log keeps only the test's own lines.
    /// </summary>
    public IReadOnlyList<string> HaTimeline(string instanceId, int count)
    {
        try
        {
            var names = Store.ListAsync<Model.NodeSpec>(Store.Keys.Nodes(instanceId), CancellationToken.None).GetAwaiter().GetResult()
                .Select(n => n.Value.NodeId).Append(instanceId).ToList();
            var lines = new List<string>();
            foreach (var log in Directory.EnumerateFiles(Settings.DataDir, "cell-*.log"))
            {
                using var stream = new FileStream(log, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
                using var reader = new StreamReader(stream);
                var cell = Path.GetFileNameWithoutExtension(log)["cell-".Length..];
                lines.AddRange(reader.ReadToEnd().Split('\n')
                    .Where(l => (l.Contains("Dingo.Ha[", StringComparison.Ordinal) || l.Contains("Runtime[", StringComparison.Ordinal))
                                && names.Any(n => l.Contains(n, StringComparison.Ordinal))
                                && !l.Contains("no action: I hold the leader key", StringComparison.Ordinal)
                                && !l.Contains("no action: streaming from", StringComparison.Ordinal))
                    .Select(l => l.TrimEnd().Replace("info: ", "", StringComparison.Ordinal).Replace("warn: ", "W ", StringComparison.Ordinal) + $" [c{cell}]"));
            }
            return [.. lines.Order(StringComparer.Ordinal).TakeLast(count)];
        }
        catch (Exception e) { return [$"(could not read the cells' logs: {e.Message})"]; }
    }

    public async Task<string> ProvisionReadyAsync(string instanceId, string? planId = null, object? parameters = null)
    {
        var (status, body) = await SendAsync(HttpMethod.Put, $"/v2/service_instances/{instanceId}?accepts_incomplete=true", ProvisionBody(planId, parameters));
        Assert.True(status == 202, $"provision answered {status}: {body.ToJsonString()}");
        var final = await WaitForOperationAsync(instanceId, TimeSpan.FromSeconds(90));
        if ((string?)final["state"] != "succeeded") Assert.Fail($"provision ended {final.ToJsonString()}\n{await InstanceStoryAsync(instanceId)}");
        // A `cluster` succeeds once its primary serves (its replicas build on): tests that go on to fail it over, switch it
        // over or count its nodes start from every replica streaming, as before.
        await WaitFullAndHealthyAsync(instanceId, TimeSpan.FromSeconds(90));
        return instanceId;
    }

    /// <summary>The instance has <paramref name="nodes"/> nodes, a leader, every node running and every other one streaming.</summary>
    public async Task<bool> FullAndHealthyAsync(string instanceId, int nodes)
    {
        var specs = (await Store.ListAsync<Model.NodeSpec>(Store.Keys.Nodes(instanceId), CancellationToken.None)).Select(n => n.Value.NodeId).ToHashSet();
        var statuses = (await Store.ListAsync<Model.NodeStatus>(Store.Keys.Statuses(instanceId), CancellationToken.None)).Select(s => s.Value).Where(s => specs.Contains(s.NodeId)).ToList();
        var leader = await Store.GetAsync<Model.LeaderRecord>(Store.Keys.Leader(instanceId), CancellationToken.None);
        return specs.Count == nodes && leader is not null
               && statuses.Count(s => s.State == Model.NodeState.Running) == nodes
               && statuses.Count(s => s.Role == NodeRole.Replica && s.Streaming) == nodes - 1;
    }

    /// <summary>Until every planned node of the instance runs and every replica streams from the leader.</summary>
    public async Task WaitFullAndHealthyAsync(string instanceId, TimeSpan timeout)
    {
        var record = (await Store.GetAsync<Model.InstanceRecord>(Store.Keys.Instance(instanceId), CancellationToken.None))?.Value
                     ?? throw new InvalidOperationException($"instance {instanceId} has no record");
        await WaitFullAndHealthyAsync(instanceId, record.NodeCount, timeout, "every node running and every replica streaming");
    }

    /// <summary>Until <see cref="FullAndHealthyAsync"/>; a timeout names <paramref name="what"/> and what each node last reported.</summary>
    public Task WaitFullAndHealthyAsync(string instanceId, int nodes, TimeSpan timeout, string what) =>
        Eventually.UntilAsync(() => FullAndHealthyAsync(instanceId, nodes), timeout, () => $"{what}; saw {HealthSummary(instanceId)}");

    /// <summary>The leader, then each node's last report on a line of its own, for a failed wait's message.</summary>
    public string HealthSummary(string instanceId)
    {
        var leader = Store.GetAsync<Model.LeaderRecord>(Store.Keys.Leader(instanceId), CancellationToken.None).GetAwaiter().GetResult()?.Value.NodeId ?? "none";
        var statuses = Store.ListAsync<Model.NodeStatus>(Store.Keys.Statuses(instanceId), CancellationToken.None).GetAwaiter().GetResult();
        // One line per node: dingo test shows the first 4 lines of a failure's message, each cut at 300 characters.
        return $"leader {leader}\n" + string.Join("\n", statuses.Select(s => s.Value).Select(s =>
            $"{s.NodeId} {s.State} {s.Role}{(s.Streaming ? " streaming" : "")} tl {s.Timeline} lsn {s.Lsn} following {s.Following ?? "-"}"
            + $" restarts {s.Restarts}: '{s.Decision}' ({s.Detail})"));
    }

    public async Task<JsonObject> BindAsync(string instanceId, string bindingId, string? planId = null)
    {
        var body = new JsonObject { ["service_id"] = Model.Catalog.ServiceId, ["plan_id"] = planId ?? Model.Catalog.SoloPlanId, ["app_guid"] = "app-1" }.ToJsonString();
        var (status, json) = await SendAsync(HttpMethod.Put, $"/v2/service_instances/{instanceId}/service_bindings/{bindingId}", body);
        Assert.True(status == 201, $"bind answered {status}: {json.ToJsonString()}");
        return json["credentials"]!.AsObject();
    }

    /// <summary>An Npgsql connection string from a binding's `uri` (postgres://user:pw@host:port/db).</summary>
    public static string ConnectionStringFromUri(string uri, int timeoutSeconds = 5)
    {
        var u = new Uri(uri);
        var userInfo = u.UserInfo.Split(':', 2);
        return new Npgsql.NpgsqlConnectionStringBuilder
        {
            Host = u.Host, Port = u.Port, Username = Uri.UnescapeDataString(userInfo[0]), Password = Uri.UnescapeDataString(userInfo[1]),
            Database = u.AbsolutePath.TrimStart('/'), Timeout = timeoutSeconds, Pooling = false,
        }.ConnectionString;
    }
}
