using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;

namespace Dingo.Routing;

/// <summary>
/// The router's fast path: the Linux kernel forwards routed connections (nftables DNAT, as kube-proxy does) while
/// the user-space <see cref="TcpRouter"/> keeps listening on every port for what only it can do, chiefly holding
/// a client while no primary is known.
/// <para>
/// It owns one nftables table (family <c>ip</c>) with a regular chain <c>routes</c> holding one rule per port that
/// has a target: <c>ip daddr BIND tcp dport PORT dnat to TARGET</c>. Two NAT base chains jump to it:
/// <c>output</c> (connections made on this host, e.g. from 127.0.0.1) and <c>prerouting</c> (connections from other
/// hosts). A port without a target has no rule, so its connections reach the fallback's listener on the same
/// port, which waits for a leader. Connections already established keep the target they were given (conntrack);
/// on a target change or removal the port's conntrack entries to the old target are deleted, so a session still
/// open to the old primary fails on its next packet (reset) instead of talking to a demoted node. An idle
/// session is not actively closed: the kernel keeps no socket that could send it a reset.
/// </para>
/// <para>
/// Only a connection's opening SYN is translated (<c>tcp flags &amp; (syn | ack) == syn</c> on the jump). A packet
/// in the middle of a connection that conntrack does not know (its entry was deleted, or it began before tracking
/// was on) is then picked up untranslated and goes to its original destination: a connection the fallback holds
/// keeps going when a rule for its port appears, and a session whose entry was dropped on a leader change reaches
/// the public port, where no socket knows it, and is reset at once. The jump also matches <c>ct state new</c>,
/// which keeps connection tracking on in the namespace even while no route has a target.
/// </para>
/// <para>
/// Bind address 0.0.0.0 matches every address of this host (<c>fib daddr type local</c>, loopback included);
/// a specific address matches only itself. IPv4 only: a route whose target is not IPv4 gets no rule and is served
/// by the fallback.
/// </para>
/// <para>
/// Several routers may share a host (one per cell): each has its own table with the same rules (they are computed
/// from the same etcd state); the first NAT chain to translate a connection wins, and a router that goes away
/// takes only its own table with it.
/// </para>
/// <para>
/// Across hosts: a <c>postrouting</c> chain masquerades connections DNATed to one of the targets that leave through
/// an interface other than <c>lo</c>, so the reply returns through this host. Forwarding a connection that arrived
/// from another host also needs <c>net.ipv4.ip_forward=1</c>, and sending one made locally to 127.0.0.1 on to
/// another host needs <c>net.ipv4.conf.all.route_localnet=1</c> (as kube-proxy sets for localhost node ports).
/// This class never changes sysctls: whoever sets up a multi-host deployment sets them. On one host
/// (targets on this host) neither is needed.
/// </para>
/// <para>
/// Changes are applied as one <c>nft -f -</c> transaction that flushes the table's chains and re-adds every rule,
/// so a rule is replaced atomically; nothing runs when the desired rules equal the last applied ones. Disposing
/// deletes the table (established connections keep flowing, new ones reach the fallback); the caller owns and
/// disposes the fallback.
/// </para>
/// </summary>
public sealed class KernelRouter : IRouteDataPath, IForwardedConnections
{
    private const string RoutesChain = "routes";
    private const int MaxCommentBytes = 120; // nftables allows 128 bytes per comment
    private static readonly TimeSpan CommandTimeout = TimeSpan.FromSeconds(15);
    // PATH under a service manager or test runner does not always include the sbin directories.
    private static readonly string[] SearchDirs = ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/local/bin"];

    private readonly IPAddress _bindAddress;
    private readonly TcpRouter _fallback;
    private readonly ILogger _logger;
    private readonly SemaphoreSlim _gate = new(1, 1);
    // Ports whose conntrack entries to an old target still have to go (kept until conntrack succeeds).
    private readonly List<StaleTarget> _staleTargets = [];
    private readonly HashSet<int> _unsupportedLogged = [];

    // The rules in the kernel now; null when unknown (never applied, or an apply failed half way).
    private Dictionary<int, KernelRule>? _applied;
    private IReadOnlyCollection<Route> _appliedRoutes = [];
    private long _nftRuns;
    private long _conntrackRuns;
    private int _disposed;

    public KernelRouter(IPAddress bindAddress, string tableName, TcpRouter fallback, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(bindAddress);
        ArgumentException.ThrowIfNullOrWhiteSpace(tableName);
        ArgumentNullException.ThrowIfNull(fallback);
        ArgumentNullException.ThrowIfNull(logger);
        if (bindAddress.IsIPv4MappedToIPv6)
            bindAddress = bindAddress.MapToIPv4();
        if (bindAddress.AddressFamily != AddressFamily.InterNetwork)
            throw new ArgumentException($"the kernel path is IPv4 only; bind address {bindAddress} is not", nameof(bindAddress));
        _bindAddress = bindAddress;
        TableName = Sanitize(tableName);
        _fallback = fallback;
        _logger = logger;
    }

    /// <summary>The nftables table (family ip) this router owns.</summary>
    public string TableName { get; }

    /// <summary>Set once the kernel rules, the fallback and the drop of sessions to old targets are all done.</summary>
    public IReadOnlyCollection<Route> Applied => Volatile.Read(ref _appliedRoutes);

    /// <summary>How many times <c>nft</c> ran for this router (applies and dispose).</summary>
    internal long NftRuns => Interlocked.Read(ref _nftRuns);

    /// <summary>How many times <c>conntrack</c> ran for this router.</summary>
    internal long ConntrackRuns => Interlocked.Read(ref _conntrackRuns);

    /// <summary>The table name for a cell: <c>dingo_</c> and the cell id, lower case, other characters as <c>_</c>.</summary>
    public static string TableNameFor(string cellId)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(cellId);
        return Sanitize("dingo_" + cellId);
    }

    /// <summary>
    /// Whether the kernel path can run here: root, <c>nft</c> and <c>conntrack</c> installed (Debian packages
    /// <c>nftables</c>, <c>conntrack</c>), and a probe table with a NAT chain can be created and deleted.
    /// </summary>
    public static bool Available(out string reason)
    {
        if (!OperatingSystem.IsLinux())
        {
            reason = "not Linux";
            return false;
        }
        if (!Environment.IsPrivilegedProcess)
        {
            reason = "not running as root (nftables and conntrack need CAP_NET_ADMIN)";
            return false;
        }
        if (FindBinary("nft") is null)
        {
            reason = "nft not found (Debian package nftables)";
            return false;
        }
        if (FindBinary("conntrack") is null)
        {
            reason = "conntrack not found (Debian package conntrack)";
            return false;
        }

        // Task.Run: no caller's synchronisation context can deadlock this wait.
        var probe = Task.Run(ProbeAsync).GetAwaiter().GetResult();
        reason = probe ?? "";
        return probe is null;
    }

    /// <summary>
    /// Makes the fallback listen on every routed port and the kernel forward every port that has a target;
    /// drops the conntrack entries of connections to targets that no longer apply.
    /// </summary>
    public async Task ApplyAsync(IReadOnlyCollection<Route> routes, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(routes);
        var desired = new SortedDictionary<int, KernelRule>();
        var seen = new HashSet<int>();
        foreach (var route in routes)
        {
            ArgumentNullException.ThrowIfNull(route);
            if (route.Port is < 1 or > IPEndPoint.MaxPort)
                throw new ArgumentException($"route for instance {route.InstanceId} has invalid port {route.Port}", nameof(routes));
            if (!seen.Add(route.Port))
                throw new ArgumentException($"port {route.Port} is routed twice", nameof(routes));
            if (KernelTarget(route) is { } target)
                desired[route.Port] = new KernelRule(route.Port, route.InstanceId, target, route.MaxConnections);
        }

        await _gate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);

            if (_applied is null)
            {
                // First (or after a failure): the table, and with it connection tracking, before any listener,
                // so no connection to the fallback goes untracked. The fallback is applied even if nft fails:
                // it can serve every port alone.
                InvalidOperationException? kernelError = null;
                try
                {
                    await ProgramAsync(desired, ct).ConfigureAwait(false);
                }
                catch (InvalidOperationException ex)
                {
                    kernelError = ex;
                }
                await _fallback.ApplyAsync(FallbackRoutes(routes), ct).ConfigureAwait(false);
                if (kernelError is not null)
                    System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(kernelError);
            }
            else
            {
                // The fallback first, so that a port losing its rule already has a listener behind it; once the
                // kernel has its rules, ports it forwards are marked overflow-only in user space.
                if (!SameRules(_applied, desired))
                {
                    var kept = _applied.Keys.Where(desired.ContainsKey).ToHashSet();
                    await _fallback.ApplyAsync(FallbackRoutes(routes, kept), ct).ConfigureAwait(false);
                    try
                    {
                        await ProgramAsync(desired, ct).ConfigureAwait(false);
                    }
                    finally
                    {
                        await _fallback.ApplyAsync(FallbackRoutes(routes), ct).ConfigureAwait(false);
                    }
                }
                else
                {
                    await _fallback.ApplyAsync(FallbackRoutes(routes), ct).ConfigureAwait(false);
                }
            }

            await DropStaleConnectionsAsync(ct).ConfigureAwait(false);
            Volatile.Write(ref _appliedRoutes, routes.ToList());
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>Deletes this router's table. The fallback is the caller's to dispose.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        await _gate.WaitAsync().ConfigureAwait(false);
        try
        {
            // "add" first makes the delete succeed whether or not the table exists.
            var script = $"add table ip {TableName}\ndelete table ip {TableName}\n";
            Interlocked.Increment(ref _nftRuns);
            var result = await RunAsync("nft", ["-f", "-"], script, CancellationToken.None).ConfigureAwait(false);
            if (result.Code != 0)
                _logger.LogError("Cannot delete nftables table {Table}: {Error}", TableName, result.Error);
            else
                _logger.LogInformation("Deleted nftables table {Table}", TableName);
            _applied = null;
        }
        catch (Exception ex) when (ex is InvalidOperationException or IOException or System.ComponentModel.Win32Exception or TimeoutException)
        {
            _logger.LogError("Cannot delete nftables table {Table}: {Error}", TableName, ex.Message);
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>
    /// The routes the user-space fallback serves: as given, except that ports the kernel forwards with a connection
    /// limit only ever see, in user space, the connections the kernel let through for being over it.
    /// </summary>
    private IReadOnlyCollection<Route> FallbackRoutes(IReadOnlyCollection<Route> routes, IReadOnlySet<int>? forwarded = null)
    {
        var inKernel = forwarded ?? _applied?.Where(r => r.Value.Limit > 0).Select(r => r.Key).ToHashSet() ?? [];
        return routes.Select(r => inKernel.Contains(r.Port) && r.MaxConnections > 0 ? r with { OverflowOnly = true } : r).ToList();
    }

    /// <summary>The whole table as one nft transaction: chains made if missing, all rules flushed and re-added.</summary>
    internal string BuildScript(IEnumerable<KernelRule> rules)
    {
        var t = TableName;
        var sb = new StringBuilder();
        sb.Append("add table ip ").Append(t).Append('\n');
        // The symbolic dstnat priority is only accepted on prerouting; -100 is its value.
        sb.Append("add chain ip ").Append(t).Append(" nat_prerouting { type nat hook prerouting priority dstnat; policy accept; }\n");
        sb.Append("add chain ip ").Append(t).Append(" nat_output { type nat hook output priority -100; policy accept; }\n");
        sb.Append("add chain ip ").Append(t).Append(" nat_postrouting { type nat hook postrouting priority srcnat; policy accept; }\n");
        sb.Append("add chain ip ").Append(t).Append(' ').Append(RoutesChain).Append('\n');
        // The per-port connection counts live in a set, one per limit value: "flush table" empties the chains but not
        // the sets, so programming the table again (any route of this cell changing) keeps every port's count. A
        // "ct count" in a rule would start again from zero each time and let up to the limit more through.
        foreach (var limit in rules.Where(r => r.Limit > 0).Select(r => r.Limit).Distinct().Order())
            sb.Append("add set ip ").Append(t).Append(' ').Append(LimitSet(limit))
                .Append(" { type inet_service; flags dynamic; size 65535; }\n");
        sb.Append("flush table ip ").Append(t).Append('\n');
        // Only a connection's opening SYN is translated (see the class comment); the ct expression also keeps
        // connection tracking on in this namespace while no rule has a target.
        foreach (var chain in new[] { "nat_prerouting", "nat_output" })
            sb.Append("add rule ip ").Append(t).Append(' ').Append(chain)
                .Append(" ct state new tcp flags & (syn | ack) == syn jump ").Append(RoutesChain).Append('\n');

        var match = _bindAddress.Equals(IPAddress.Any) ? "fib daddr type local" : $"ip daddr {_bindAddress}";
        var targets = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var rule in rules)
        {
            // Over its limit, a new connection is not translated: it reaches the user-space listener, which
            // answers with PostgreSQL's "too many connections" error.
            if (rule.Limit > 0)
                sb.Append("add rule ip ").Append(t).Append(' ').Append(RoutesChain).Append(' ')
                    .Append(match).Append(" tcp dport ").Append(rule.Port.ToString(CultureInfo.InvariantCulture))
                    .Append(" add @").Append(LimitSet(rule.Limit)).Append(" { tcp dport ct count over ")
                    .Append(rule.Limit.ToString(CultureInfo.InvariantCulture)).Append(" } accept")
                    .Append(" comment \"").Append(Comment(rule.InstanceId)).Append(" over limit\"\n");
            sb.Append("add rule ip ").Append(t).Append(' ').Append(RoutesChain).Append(' ')
                .Append(match).Append(" tcp dport ").Append(rule.Port.ToString(CultureInfo.InvariantCulture))
                .Append(" dnat to ").Append(rule.Target.Address).Append(':').Append(rule.Target.Port.ToString(CultureInfo.InvariantCulture))
                .Append(" comment \"").Append(Comment(rule.InstanceId)).Append("\"\n");
            targets.Add($"{rule.Target.Address} . {rule.Target.Port.ToString(CultureInfo.InvariantCulture)}");
        }

        // Across hosts: the target must answer through this host. Loopback traffic never needs it.
        if (targets.Count > 0)
            sb.Append("add rule ip ").Append(t).Append(" nat_postrouting ct status dnat oifname != \"lo\" ip daddr . tcp dport { ")
                .AppendJoin(", ", targets).Append(" } masquerade\n");
        return sb.ToString();
    }

    /// <summary>
    /// The set counting connections per port for one limit value. A set element keeps the limit it was made with, so a
    /// port whose limit changes is counted in another set; a port's element counts only connections conntrack still
    /// tracks open, so an element left from a removed route never counts anything stale.
    /// </summary>
    private static string LimitSet(int limit) => "limit_" + limit.ToString(CultureInfo.InvariantCulture);

    private async Task ProgramAsync(SortedDictionary<int, KernelRule> desired, CancellationToken ct)
    {
        var previous = _applied;
        var changes = Describe(previous, desired);
        var stale = StaleTargets(previous, desired);
        var script = BuildScript(desired.Values);

        // Unknown from here until nft reports: a cancelled or failed run may or may not have committed.
        _applied = null;
        Interlocked.Increment(ref _nftRuns);
        (int Code, string Error, string Output) result;
        try
        {
            result = await RunAsync("nft", ["-f", "-"], script, ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // Maybe committed: drop sessions to the old targets anyway on the next apply. Where the rule did not
            // change that is harmless: the next packet picks the same target again and the session goes on.
            _staleTargets.AddRange(stale);
            throw;
        }
        catch (Exception ex)
        {
            result = (-1, ex.Message, "");
        }

        if (result.Code == 0)
        {
            _applied = new Dictionary<int, KernelRule>(desired);
            _staleTargets.AddRange(stale);
            foreach (var change in changes)
                _logger.LogInformation("Kernel route {Change} (table {Table})", change, TableName);
            return;
        }

        // The kernel may still forward to a target that is no longer right. Remove the table so every new
        // connection reaches the fallback (already up to date), and still drop sessions to old targets.
        var message = $"nft could not program table {TableName} ({(changes.Count > 0 ? string.Join("; ", changes) : "re-applying all rules")}): {result.Error}";
        _logger.LogError("{Message}; removing the table so the user-space router serves every port", message);
        try
        {
            Interlocked.Increment(ref _nftRuns);
            var removed = await RunAsync("nft", ["-f", "-"], $"add table ip {TableName}\ndelete table ip {TableName}\n", ct).ConfigureAwait(false);
            if (removed.Code == 0)
            {
                _applied = new Dictionary<int, KernelRule>();
                _staleTargets.AddRange(StaleTargets(previous, new Dictionary<int, KernelRule>()));
            }
            else
            {
                _logger.LogError("Cannot delete nftables table {Table} either: {Error}", TableName, removed.Error);
                _staleTargets.AddRange(stale);
            }
        }
        catch (Exception ex) when (ex is InvalidOperationException or IOException or System.ComponentModel.Win32Exception or TimeoutException)
        {
            _logger.LogError("Cannot delete nftables table {Table} either: {Error}", TableName, ex.Message);
            _staleTargets.AddRange(stale);
        }

        try
        {
            await DropStaleConnectionsAsync(ct).ConfigureAwait(false);
        }
        catch (InvalidOperationException ex)
        {
            message += "; " + ex.Message;
        }
        throw new InvalidOperationException(message);
    }

    /// <summary>Deletes the conntrack entries of every pending old target; failures stay pending and are reported.</summary>
    private async Task DropStaleConnectionsAsync(CancellationToken ct)
    {
        if (_staleTargets.Count == 0)
            return;

        var errors = new List<string>();
        foreach (var stale in _staleTargets.ToList())
        {
            List<string> args = ["-D", "-p", "tcp", "--orig-port-dst", stale.Port.ToString(CultureInfo.InvariantCulture)];
            if (!_bindAddress.Equals(IPAddress.Any))
                args.AddRange(["--orig-dst", _bindAddress.ToString()]);
            args.AddRange(["--reply-src", stale.Target.Address.ToString(), "--reply-port-src", stale.Target.Port.ToString(CultureInfo.InvariantCulture)]);

            Interlocked.Increment(ref _conntrackRuns);
            (int Code, string Error, string Output) result;
            try
            {
                result = await RunAsync("conntrack", args, null, ct).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                result = (-1, ex.Message, "");
            }

            // conntrack exits 1 when nothing matched; that is success here.
            if (result.Code == 0 || result.Error.Contains(" 0 flow entries", StringComparison.Ordinal))
            {
                _staleTargets.Remove(stale);
                _logger.LogDebug("Dropped connections of port {Port} (instance {InstanceId}) to {Target}: {Output}",
                    stale.Port, stale.InstanceId, stale.Target, result.Error);
            }
            else
            {
                errors.Add($"conntrack could not drop connections of port {stale.Port} (instance {stale.InstanceId}) to old target {stale.Target}: {result.Error}");
            }
        }

        if (errors.Count > 0)
            throw new InvalidOperationException(string.Join("; ", errors) + " (retried on the next apply)");
    }

    private IPEndPoint? KernelTarget(Route route)
    {
        if (route.Target is not { } target)
            return null;
        // Read-only ports balance over a pool of replicas: user space does that (one DNAT target per rule here).
        if (route.Pool.Count > 0)
            return null;
        var address = target.Address.IsIPv4MappedToIPv6 ? target.Address.MapToIPv4() : target.Address;
        if (address.AddressFamily == AddressFamily.InterNetwork)
            return new IPEndPoint(address, target.Port);
        if (_unsupportedLogged.Add(route.Port))
            _logger.LogWarning("Port {Port} (instance {InstanceId}): target {Target} is not IPv4; served by the user-space router",
                route.Port, route.InstanceId, target);
        return null;
    }

    private static bool SameRules(Dictionary<int, KernelRule> applied, SortedDictionary<int, KernelRule> desired) =>
        applied.Count == desired.Count && desired.All(d => applied.TryGetValue(d.Key, out var a) && a == d.Value);

    /// <summary>Old targets whose connections must go: the port's rule was removed, or now points elsewhere.</summary>
    private static List<StaleTarget> StaleTargets(Dictionary<int, KernelRule>? previous, IDictionary<int, KernelRule> desired)
    {
        var stale = new List<StaleTarget>();
        if (previous is null)
            return stale;
        foreach (var (port, old) in previous)
            if (!desired.TryGetValue(port, out var now) || now != old)
                stale.Add(new StaleTarget(port, old.InstanceId, old.Target));
        return stale;
    }

    private static List<string> Describe(Dictionary<int, KernelRule>? previous, SortedDictionary<int, KernelRule> desired)
    {
        var changes = new List<string>();
        if (previous is not null)
            foreach (var (port, old) in previous)
                if (!desired.ContainsKey(port))
                    changes.Add($"removed: port {port} (instance {old.InstanceId}) was -> {old.Target}");
        foreach (var (port, rule) in desired)
        {
            if (previous is not null && previous.TryGetValue(port, out var old))
            {
                if (old != rule)
                    changes.Add($"changed: port {port} (instance {rule.InstanceId}) {old.Target} -> {rule.Target}");
            }
            else
            {
                changes.Add($"set: port {port} (instance {rule.InstanceId}) -> {rule.Target}");
            }
        }
        return changes;
    }

    private static string Sanitize(string name)
    {
        var sb = new StringBuilder(name.Length);
        foreach (var c in name.Trim().ToLowerInvariant())
            sb.Append(c is >= 'a' and <= 'z' or >= '0' and <= '9' or '_' ? c : '_');
        if (sb.Length == 0 || sb[0] is < 'a' or > 'z')
            sb.Insert(0, "t_");
        return sb.Length > 64 ? sb.ToString(0, 64) : sb.ToString();
    }

    private static string Comment(string instanceId)
    {
        var sb = new StringBuilder("instance ");
        foreach (var c in instanceId)
            if (char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' or ':')
                sb.Append(c);
        return sb.Length > MaxCommentBytes ? sb.ToString(0, MaxCommentBytes) : sb.ToString();
    }

    private static async Task<string?> ProbeAsync()
    {
        var probe = $"dingo_probe_{Environment.ProcessId}_{Random.Shared.Next(100000)}";
        try
        {
            var created = await RunAsync("nft", ["-f", "-"],
                $"add table ip {probe}\nadd chain ip {probe} nat_output {{ type nat hook output priority -100; policy accept; }}\n",
                CancellationToken.None).ConfigureAwait(false);
            if (created.Code != 0)
                return $"cannot create an nftables NAT chain: {created.Error}";
            var deleted = await RunAsync("nft", ["delete", "table", "ip", probe], null, CancellationToken.None).ConfigureAwait(false);
            if (deleted.Code != 0)
                return $"cannot delete the nftables probe table {probe}: {deleted.Error}";
            var count = await RunAsync("conntrack", ["-C"], null, CancellationToken.None).ConfigureAwait(false);
            if (count.Code != 0)
                return $"conntrack cannot read the connection table: {count.Error}";
            return null;
        }
        catch (Exception ex) when (ex is InvalidOperationException or IOException or System.ComponentModel.Win32Exception or TimeoutException)
        {
            return ex.Message;
        }
    }

    private static string? FindBinary(string name)
    {
        var path = Environment.GetEnvironmentVariable("PATH") ?? "";
        foreach (var dir in path.Split(':', StringSplitOptions.RemoveEmptyEntries).Concat(SearchDirs))
        {
            var candidate = Path.Combine(dir, name);
            if (File.Exists(candidate))
                return candidate;
        }
        return null;
    }

    /// <summary>
    /// Connections the kernel is forwarding now, per public port, read from conntrack (established flows whose
    /// destination was translated). The router's metrics add them to the user-space counts.
    /// </summary>
    public async Task<IReadOnlyDictionary<int, int>> ForwardedConnectionsAsync(CancellationToken ct)
    {
        var ports = _applied?.Keys.ToHashSet() ?? [];
        var counts = new Dictionary<int, int>();
        if (ports.Count == 0) return counts;
        var result = await RunAsync("conntrack", ["-L", "-p", "tcp", "--state", "ESTABLISHED"], null, ct).ConfigureAwait(false);
        if (result.Code != 0) return counts;
        var any = _bindAddress.Equals(IPAddress.Any);
        foreach (var line in result.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            // Original tuple first (src dst sport dport), then the reply tuple: a translated flow's reply comes
            // from the target's port, not the public one.
            string? dst = null, dport = null, replySport = null;
            var sports = 0;
            foreach (var token in line.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            {
                if (dst is null && token.StartsWith("dst=", StringComparison.Ordinal)) dst = token[4..];
                else if (dport is null && token.StartsWith("dport=", StringComparison.Ordinal)) dport = token[6..];
                else if (token.StartsWith("sport=", StringComparison.Ordinal) && ++sports == 2) replySport = token[6..];
            }
            if (dport is null || !int.TryParse(dport, NumberStyles.None, CultureInfo.InvariantCulture, out var port) || !ports.Contains(port)) continue;
            if (replySport == dport) continue; // not translated: a connection to the user-space listener
            if (!any && dst != _bindAddress.ToString()) continue;
            counts[port] = counts.GetValueOrDefault(port) + 1;
        }
        return counts;
    }

    /// <summary>Runs a binary without a shell; returns its exit code, stderr (or the exit code when it wrote none) and stdout.</summary>
    private static async Task<(int Code, string Error, string Output)> RunAsync(string name, IEnumerable<string> args, string? stdin, CancellationToken ct)
    {
        var file = FindBinary(name) ?? throw new InvalidOperationException($"{name} not found (install the Debian package {(name == "nft" ? "nftables" : name)})");
        var psi = new ProcessStartInfo(file);
        foreach (var arg in args)
            psi.ArgumentList.Add(arg);
        var result = await ProcessRunner.RunAsync(psi, stdin, CommandTimeout, ct, name: $"{name} {string.Join(' ', psi.ArgumentList)}").ConfigureAwait(false);
        var error = result.StdErr.Trim();
        return (result.ExitCode, error.Length > 0 ? error : $"exit code {result.ExitCode}", result.StdOut);
    }

    internal sealed record KernelRule(int Port, string InstanceId, IPEndPoint Target, int Limit = 0);

    private sealed record StaleTarget(int Port, string InstanceId, IPEndPoint Target);
}
