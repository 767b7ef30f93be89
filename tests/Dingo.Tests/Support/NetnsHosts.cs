using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;

namespace Dingo.Tests.Support;

/// <summary>A process started on a simulated host, with the file its stdout and stderr go to.</summary>
public sealed record HostProcess(int Host, Process Process, string LogPath);

/// <summary>
/// N simulated hosts on this machine: one network namespace per host, each with an `eth0` veth on a bridge
/// of its own in the root namespace. Addresses come from a 10.213.X.0/24 that no interface or route here
/// uses; the bridge has .1 (a test can run etcd there), host i has .(10+i). Hosts reach each other and the
/// bridge address over the connected /24; by default anything else is `unreachable` inside the namespace, so
/// a stray DNS lookup or outside address fails at once and no packet leaves the namespace (see
/// <see cref="CreateAsync"/> for a default route via the bridge instead). Disposing kills every process
/// in the namespaces and deletes namespaces, veths and bridge. A marker file per harness under
/// /run/dingo-netns-hosts lets the next harness sweep what a crashed test process left behind.
/// </summary>
public sealed class NetnsHosts : IAsyncDisposable
{
    private const string Prefix = "10.213";
    private const string StateDir = "/run/dingo-netns-hosts";
    private const int MaxHosts = 200;
    private static readonly TimeSpan KillTimeout = TimeSpan.FromSeconds(10);

    // Resolved once: PATH under a test runner does not always include /usr/sbin.
    private static readonly string Ip = Resolve("ip", "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip");
    private static readonly string Nsenter = Resolve("nsenter", "/usr/bin/nsenter", "/bin/nsenter", "/usr/sbin/nsenter");
    private static readonly Lazy<(bool Ok, string Reason)> Probe = new(RunProbe, LazyThreadSafetyMode.ExecutionAndPublication);

    private readonly object _gate = new();
    private readonly List<HostProcess> _processes = new();
    private readonly string[] _namespaces;
    private readonly string[] _veths;
    private readonly string _marker;
    private readonly bool _keepLogs;
    private readonly bool _defaultViaBridge;
    private readonly EventHandler _onExit;
    private bool _closed;
    private int _tornDown;

    private NetnsHosts(string id, int subnet, int count, bool keepLogs, bool defaultViaBridge)
    {
        Id = id;
        Subnet = subnet;
        BridgeName = $"dgb{id}";
        _namespaces = Enumerable.Range(0, count).Select(i => $"dg{id}h{i}").ToArray();
        _veths = Enumerable.Range(0, count).Select(i => $"dg{id}v{i}").ToArray();
        _keepLogs = keepLogs;
        _defaultViaBridge = defaultViaBridge;
        LogDirectory = Path.Combine(Path.GetTempPath(), $"dingo-netns-{id}-{Guid.NewGuid():N}"[..30]);
        Directory.CreateDirectory(LogDirectory);
        _marker = Path.Combine(StateDir, $"{id}.hosts");
        WriteMarker();
        // Last resort when a test forgets to dispose or the run is stopped with SIGTERM.
        _onExit = (_, _) => { try { Teardown(); } catch (Exception) { } };
        AppDomain.CurrentDomain.ProcessExit += _onExit;
    }

    public string Id { get; }
    public int Subnet { get; }
    public int Count => _namespaces.Length;
    public string BridgeName { get; }
    public string BridgeAddress => $"{Prefix}.{Subnet}.1";
    public string LogDirectory { get; }

    public string HostAddress(int i) => $"{Prefix}.{Subnet}.{10 + CheckHost(i)}";
    public string Namespace(int i) => _namespaces[CheckHost(i)];
    public string NamespacePath(int i) => $"/run/netns/{Namespace(i)}";

    /// <summary>The root-namespace end of host i's veth, the one attached to the bridge.</summary>
    public string BridgePort(int i) => _veths[CheckHost(i)];

    public IReadOnlyList<HostProcess> Processes
    {
        get { lock (_gate) return _processes.ToArray(); }
    }

    public string LogPath(Process process)
    {
        lock (_gate) return _processes.FirstOrDefault(p => ReferenceEquals(p.Process, process))?.LogPath
                            ?? throw new ArgumentException("process was not started by this harness", nameof(process));
    }

    /// <summary>True when this machine can run the harness: root, and `ip netns add` works (probed once).</summary>
    public static bool Supported(out string reason)
    {
        (var ok, reason) = Probe.Value;
        return ok;
    }

    /// <summary>
    /// Builds the bridge and <paramref name="hosts"/> hosts. <paramref name="keepLogs"/> keeps the log folder
    /// after disposal. <paramref name="defaultViaBridge"/> gives each host `default via` the bridge address
    /// (for software that insists on a default route): packets for other addresses then reach the root
    /// namespace, which drops them only because it does not forward, so this is refused when
    /// net.ipv4.ip_forward is on; the machine's own root-namespace addresses become reachable too.
    /// </summary>
    public static async Task<NetnsHosts> CreateAsync(int hosts, bool keepLogs = false, bool defaultViaBridge = false, CancellationToken ct = default)
    {
        if (hosts < 1 || hosts > MaxHosts) throw new ArgumentOutOfRangeException(nameof(hosts), hosts, $"1..{MaxHosts} hosts");
        if (!Supported(out var reason)) throw new InvalidOperationException("network namespaces unavailable: " + reason);
        if (defaultViaBridge && (await File.ReadAllTextAsync("/proc/sys/net/ipv4/ip_forward", ct)).Trim() != "0")
            throw new InvalidOperationException("net.ipv4.ip_forward is on: a default route via the bridge would let hosts' packets leave the machine");
        NetnsHosts? created = null;
        try
        {
            // Choosing the subnet and adding the bridge address is one step under a machine-wide lock, so
            // parallel harnesses (in this process or another) never pick the same subnet.
            using (await AcquireLockAsync(ct))
            {
                SweepStale();
                var id = NewId();
                var subnet = PickSubnet();
                created = new NetnsHosts(id, subnet, hosts, keepLogs, defaultViaBridge);
                await created.CreateBridgeAsync(ct);
            }
            for (var i = 0; i < hosts; i++) await created.CreateHostAsync(i, ct);
            return created;
        }
        catch
        {
            if (created is not null)
            {
                try { await created.DisposeAsync(); }
                catch (Exception ex) { Console.Error.WriteLine($"netns hosts: cleanup after failed create: {ex.Message}"); }
            }
            throw;
        }
    }

    private async Task CreateBridgeAsync(CancellationToken ct)
    {
        // A fixed MAC: otherwise the bridge takes its ports' lowest MAC, which changes as hosts come and go
        // and leaves stale gateway entries in the hosts' ARP caches.
        var mac = new byte[6];
        Random.Shared.NextBytes(mac);
        mac[0] = (byte)((mac[0] & 0xFC) | 0x02);
        await IpAsync(ct, "link", "add", "name", BridgeName, "address", string.Join(':', mac.Select(b => b.ToString("x2"))), "type", "bridge");
        await IpAsync(ct, "addr", "add", $"{BridgeAddress}/24", "dev", BridgeName);
        await IpAsync(ct, "link", "set", BridgeName, "up");
    }

    private async Task CreateHostAsync(int i, CancellationToken ct)
    {
        var ns = _namespaces[i];
        await IpAsync(ct, "netns", "add", ns);
        // The peer is created directly inside the namespace under its final name: no rename, no window in
        // which it sits in the root namespace.
        await IpAsync(ct, "link", "add", _veths[i], "type", "veth", "peer", "name", "eth0", "netns", ns);
        await IpAsync(ct, "link", "set", _veths[i], "master", BridgeName, "up");
        await IpAsync(ct, "-n", ns, "addr", "add", $"{HostAddress(i)}/24", "dev", "eth0");
        await IpAsync(ct, "-n", ns, "link", "set", "lo", "up");
        await IpAsync(ct, "-n", ns, "link", "set", "eth0", "up");
        await SetDefaultRouteAsync(i, ct);
    }

    private Task SetDefaultRouteAsync(int i, CancellationToken ct) =>
        _defaultViaBridge
            ? IpAsync(ct, "-n", Namespace(i), "route", "replace", "default", "via", BridgeAddress)
            : IpAsync(ct, "-n", Namespace(i), "route", "replace", "unreachable", "default");

    /// <summary>
    /// Starts `file args` in host i's network namespace (nsenter, not `ip netns exec`, whose fresh /sys
    /// hides the cgroup hierarchy from runc). Stdin is /dev/null; stdout and stderr go to a log file.
    /// </summary>
    public Process Start(int i, string file, IEnumerable<string> args, IDictionary<string, string>? env = null)
    {
        CheckHost(i);
        var psi = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
        // sh redirects and execs, so the Process's pid ends up being `file` itself (nsenter execs too) and
        // the output lands in the file even after this test process is gone.
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("exec </dev/null >>\"$0\" 2>&1; exec \"$@\"");
        psi.ArgumentList.Add("");
        psi.ArgumentList.Add(Nsenter);
        psi.ArgumentList.Add($"--net={NamespacePath(i)}");
        psi.ArgumentList.Add("--");
        psi.ArgumentList.Add(file);
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (env is not null)
        {
            foreach (var (k, v) in env) psi.Environment[k] = v;
        }
        lock (_gate)
        {
            // Under the lock so that a concurrent dispose either sees this process or refuses to start it.
            ObjectDisposedException.ThrowIf(_closed, this);
            var log = Path.Combine(LogDirectory, $"h{i}-{_processes.Count:D3}-{Sanitize(Path.GetFileName(file))}.log");
            psi.ArgumentList[2] = log;
            var process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {file} on host {i}");
            _processes.Add(new HostProcess(i, process, log));
            return process;
        }
    }

    /// <summary>Runs a command on host i to completion (killed after the timeout); its exit code and output.</summary>
    public async Task<(int ExitCode, string Output)> RunAsync(int i, string file, IEnumerable<string> args, TimeSpan timeout, CancellationToken ct = default)
    {
        var process = Start(i, file, args);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            TryKill(process);
            await process.WaitForExitAsync(CancellationToken.None);
            if (ct.IsCancellationRequested) throw;
            return (-1, await File.ReadAllTextAsync(LogPath(process), CancellationToken.None) + $"\n[killed after {timeout}]");
        }
        return (process.ExitCode, await File.ReadAllTextAsync(LogPath(process), ct));
    }

    /// <summary>Cuts host i off from everything: the bridge side of its veth goes down. Its own eth0 stays
    /// configured (addresses, routes), as on a host whose cable was pulled.</summary>
    public Task PartitionAsync(int i, CancellationToken ct = default) => IpAsync(ct, "link", "set", BridgePort(i), "down");

    public async Task HealAsync(int i, CancellationToken ct = default)
    {
        await IpAsync(ct, "link", "set", BridgePort(i), "up");
        // Should the default route have gone with a link change, put it back.
        await SetDefaultRouteAsync(i, ct);
    }

    /// <summary>Pids of every process living in host i's network namespace (`ip netns pids`).</summary>
    public async Task<IReadOnlyList<int>> PidsAsync(int i, CancellationToken ct = default)
    {
        var r = await RunCommandAsync(Ip, ["netns", "pids", Namespace(i)], ct);
        if (r.Code != 0) throw new InvalidOperationException($"ip netns pids {Namespace(i)} failed: {r.Err.Trim()}");
        return ParsePids(r.Out);
    }

    /// <summary>SIGKILLs every process started on host i and every other process in its namespace, and waits
    /// until they are gone. The namespace stays: processes can be started on the host again.</summary>
    public async Task KillHostAsync(int i, CancellationToken ct = default)
    {
        CheckHost(i);
        HostProcess[] mine;
        lock (_gate) mine = _processes.Where(p => p.Host == i).ToArray();
        foreach (var p in mine) TryKill(p.Process);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(KillTimeout);
        try
        {
            // Repeated until empty: a process may fork between listing and killing.
            while (true)
            {
                var pids = await PidsAsync(i, cts.Token);
                if (pids.Count == 0) break;
                foreach (var pid in pids) KillPid(pid);
                await Task.Delay(50, cts.Token);
            }
            foreach (var p in mine) await p.Process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new TimeoutException($"processes on host {i} ({Namespace(i)}) still alive after {KillTimeout}");
        }
    }

    public async ValueTask DisposeAsync()
    {
        List<string> leftovers;
        try { leftovers = await Task.Run(Teardown); }
        finally { AppDomain.CurrentDomain.ProcessExit -= _onExit; }
        if (leftovers.Count > 0)
            throw new InvalidOperationException("netns hosts: could not remove " + string.Join(", ", leftovers));
    }

    /// <summary>Kills, then deletes veths, namespaces and bridge. Synchronous so the ProcessExit hook can use
    /// it. Runs once; a second call returns nothing left over.</summary>
    private List<string> Teardown()
    {
        if (Interlocked.Exchange(ref _tornDown, 1) == 1) return [];
        HostProcess[] all;
        lock (_gate)
        {
            _closed = true;
            all = _processes.ToArray();
        }
        // Ordered by what matters most, since on the ProcessExit path the test runner may kill this process
        // within ~100 ms: processes first, logs, the network, and the marker last (a marker left behind is
        // swept by the next harness). A plain SIGKILL each: walking process trees is slow, and the namespace
        // sweep finds the children.
        foreach (var p in all) TryKill(p.Process, tree: false);
        foreach (var ns in _namespaces) KillNamespace(ns);
        foreach (var p in all) p.Process.WaitForExit(2000);
        if (!_keepLogs)
        {
            try { Directory.Delete(LogDirectory, recursive: true); }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
        var leftovers = RemoveResources(BridgeName, _veths, _namespaces);
        if (leftovers.Count == 0) TryDeleteFile(_marker);
        return leftovers;
    }

    /// <summary>Deletes what exists of the given resources; names those still present afterwards.</summary>
    private static List<string> RemoveResources(string bridge, IEnumerable<string> veths, IEnumerable<string> namespaces)
    {
        // One `ip` for all of it: the ProcessExit hook has little time before the test runner kills the
        // process. Deleting the root end of a veth deletes its peer in the namespace too.
        var batch = new StringBuilder();
        foreach (var v in veths.Where(LinkExists)) batch.Append($"link del {v}\n");
        foreach (var ns in namespaces.Where(NetnsExists)) batch.Append($"netns del {ns}\n");
        if (LinkExists(bridge)) batch.Append($"link del {bridge}\n");
        if (batch.Length > 0) RunCommand(Ip, ["-force", "-batch", "-"], batch.ToString());
        return veths.Where(LinkExists).Select(v => $"veth {v}")
            .Concat(namespaces.Where(NetnsExists).Select(n => $"netns {n}"))
            .Concat(LinkExists(bridge) ? [$"bridge {bridge}"] : Array.Empty<string>())
            .ToList();
    }

    private static void KillNamespace(string ns)
    {
        if (!NetnsExists(ns)) return;
        var deadline = DateTime.UtcNow + KillTimeout;
        while (DateTime.UtcNow < deadline)
        {
            var r = RunCommand(Ip, ["netns", "pids", ns]);
            var pids = r.Code == 0 ? ParsePids(r.Out) : [];
            if (pids.Count == 0) return;
            foreach (var pid in pids) KillPid(pid);
            Thread.Sleep(10);
        }
    }

    // ---- subnet, names, lock, stale sweep ----

    private static async Task<IDisposable> AcquireLockAsync(CancellationToken ct)
    {
        Directory.CreateDirectory(StateDir);
        var path = Path.Combine(StateDir, "lock");
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            try
            {
                // FileShare.None takes an flock on Linux: exclusive across processes and within this one, and
                // released by the kernel if the holder dies.
                return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(50, ct);
            }
        }
    }

    private static string NewId()
    {
        const string chars = "abcdefghijklmnopqrstuvwxyz0123456789";
        for (var attempt = 0; attempt < 100; attempt++)
        {
            var id = string.Concat(Enumerable.Range(0, 4).Select(_ => chars[Random.Shared.Next(chars.Length)]));
            var taken = LinkExists($"dgb{id}") || File.Exists(Path.Combine(StateDir, $"{id}.hosts"))
                        || (Directory.Exists("/run/netns") && Directory.EnumerateFiles("/run/netns", $"dg{id}h*").Any());
            if (!taken) return id;
        }
        throw new InvalidOperationException("no free harness id");
    }

    /// <summary>A 10.213.X.0/24 that overlaps no address or route of the root namespace (any table).</summary>
    private static int PickSubnet()
    {
        var used = UsedPrefixes();
        var start = Random.Shared.Next(254);
        for (var k = 0; k < 254; k++)
        {
            var x = 1 + (start + k) % 254;
            var net = ToUInt($"{Prefix}.{x}.0");
            if (!used.Any(u => Overlaps(u.Net, u.Len, net, 24))) return x;
        }
        throw new InvalidOperationException($"every {Prefix}.X.0/24 overlaps an address or route on this machine");
    }

    private static List<(uint Net, int Len)> UsedPrefixes()
    {
        var used = new List<(uint, int)>();
        var addrs = RunChecked(Ip, ["-j", "-4", "addr", "show"]);
        foreach (var link in JsonDocument.Parse(addrs).RootElement.EnumerateArray())
        {
            if (!link.TryGetProperty("addr_info", out var infos)) continue;
            foreach (var info in infos.EnumerateArray())
            {
                if (!info.TryGetProperty("local", out var local) || !info.TryGetProperty("prefixlen", out var len)) continue;
                used.Add((ToUInt(local.GetString()!), len.GetInt32()));
            }
        }
        var routes = RunChecked(Ip, ["-j", "-4", "route", "show", "table", "all"]);
        foreach (var route in JsonDocument.Parse(routes).RootElement.EnumerateArray())
        {
            // The default route covers everything by definition; it is not a use of our subnet.
            if (!route.TryGetProperty("dst", out var dst) || dst.GetString() is not { } d || d == "default") continue;
            var parts = d.Split('/');
            if (!IPAddress.TryParse(parts[0], out _)) continue;
            var len = parts.Length > 1 ? int.Parse(parts[1]) : 32;
            if (len > 0) used.Add((ToUInt(parts[0]), len));
        }
        return used;
    }

    private static bool Overlaps(uint a, int aLen, uint b, int bLen)
    {
        var len = Math.Min(aLen, bLen);
        var mask = len == 0 ? 0u : uint.MaxValue << (32 - len);
        return (a & mask) == (b & mask);
    }

    private static uint ToUInt(string address) => BinaryPrimitives.ReadUInt32BigEndian(IPAddress.Parse(address).GetAddressBytes());

    private void WriteMarker()
    {
        var sb = new StringBuilder();
        sb.AppendLine($"owner {Environment.ProcessId} {StartTime(Environment.ProcessId)}");
        sb.AppendLine($"bridge {BridgeName}");
        foreach (var v in _veths) sb.AppendLine($"veth {v}");
        foreach (var n in _namespaces) sb.AppendLine($"netns {n}");
        sb.AppendLine($"logs {LogDirectory}");
        File.WriteAllText(_marker, sb.ToString());
    }

    /// <summary>Removes what harnesses of dead test processes (killed before ProcessExit) left behind.</summary>
    private static void SweepStale()
    {
        foreach (var marker in Directory.EnumerateFiles(StateDir, "*.hosts"))
        {
            try
            {
                var lines = File.ReadAllLines(marker).Select(l => l.Split(' ', 2)).Where(p => p.Length == 2).ToList();
                var owner = lines.FirstOrDefault(p => p[0] == "owner")?[1].Split(' ');
                if (owner is { Length: 2 } && int.TryParse(owner[0], out var pid) && StartTime(pid) == owner[1]) continue;
                var namespaces = lines.Where(p => p[0] == "netns").Select(p => p[1]).ToList();
                foreach (var ns in namespaces) KillNamespace(ns);
                var left = RemoveResources(lines.FirstOrDefault(p => p[0] == "bridge")?[1] ?? "", lines.Where(p => p[0] == "veth").Select(p => p[1]).ToList(), namespaces);
                var logs = lines.FirstOrDefault(p => p[0] == "logs")?[1];
                if (logs is not null && Directory.Exists(logs)) Directory.Delete(logs, recursive: true);
                if (left.Count == 0) File.Delete(marker);
                else Console.Error.WriteLine($"netns hosts: stale {marker} left {string.Join(", ", left)}");
            }
            catch (IOException ex)
            {
                Console.Error.WriteLine($"netns hosts: sweeping {marker}: {ex.Message}");
            }
        }
    }

    /// <summary>Field 22 of /proc/pid/stat, so a reused pid is not mistaken for the marker's owner.</summary>
    private static string? StartTime(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return fields.Length > 19 ? fields[19] : null;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    // ---- probes and commands ----

    private static (bool, string) RunProbe()
    {
        if (!OperatingSystem.IsLinux()) return (false, "network namespaces need Linux");
        if (!Environment.IsPrivilegedProcess) return (false, $"network namespaces need root (running as {Environment.UserName})");
        var probe = $"dgprobe{Random.Shared.Next(100000)}";
        try
        {
            var n = RunCommand(Nsenter, ["--version"]);
            if (n.Code != 0) return (false, $"nsenter does not run: {n.Err.Trim()}");
            var add = RunCommand(Ip, ["netns", "add", probe]);
            if (add.Code != 0) return (false, $"`ip netns add {probe}` failed ({add.Code}): {add.Err.Trim()}");
            var del = RunCommand(Ip, ["netns", "del", probe]);
            if (del.Code != 0) return (false, $"`ip netns del {probe}` failed ({del.Code}): {del.Err.Trim()}");
            return (true, "");
        }
        catch (System.ComponentModel.Win32Exception ex)
        {
            return (false, $"cannot run ip/nsenter: {ex.Message}");
        }
    }

    private static async Task IpAsync(CancellationToken ct, params string[] args)
    {
        var r = await RunCommandAsync(Ip, args, ct);
        if (r.Code != 0) throw new InvalidOperationException($"ip {string.Join(' ', args)} failed ({r.Code}): {r.Err.Trim()}");
    }

    private static string RunChecked(string file, IEnumerable<string> args)
    {
        var r = RunCommand(file, args);
        if (r.Code != 0) throw new InvalidOperationException($"{file} {string.Join(' ', args)} failed ({r.Code}): {r.Err.Trim()}");
        return r.Out;
    }

    private static Process StartCaptured(string file, IEnumerable<string> args, string? input = null)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {file}");
        // Closed either way, so a command never waits on the test process's stdin.
        if (input is not null) p.StandardInput.Write(input);
        p.StandardInput.Close();
        return p;
    }

    /// <summary>Runs a command in the root namespace; its exit code, stdout and stderr.</summary>
    internal static async Task<(int Code, string Out, string Err)> RunCommandAsync(string file, IEnumerable<string> args, CancellationToken ct)
    {
        using var p = StartCaptured(file, args);
        var stdout = p.StandardOutput.ReadToEndAsync(ct);
        var stderr = p.StandardError.ReadToEndAsync(ct);
        try
        {
            await p.WaitForExitAsync(ct);
        }
        catch (OperationCanceledException)
        {
            TryKill(p);
            throw;
        }
        return (p.ExitCode, await stdout, await stderr);
    }

    private static (int Code, string Out, string Err) RunCommand(string file, IEnumerable<string> args, string? input = null)
    {
        using var p = StartCaptured(file, args, input);
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(10_000))
        {
            TryKill(p);
            return (-1, "", $"{file} timed out");
        }
        p.WaitForExit();
        return (p.ExitCode, stdout.GetAwaiter().GetResult(), stderr.GetAwaiter().GetResult());
    }

    internal static string IpPath => Ip;

    private static List<int> ParsePids(string text) =>
        text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(s => int.TryParse(s, out var pid) ? pid : -1).Where(pid => pid > 0 && pid != Environment.ProcessId).ToList();

    private static void TryKill(Process p, bool tree = true)
    {
        try { if (tree) ProcessTree.Kill(p); else p.Kill(); }
        catch (InvalidOperationException) { }
        catch (System.ComponentModel.Win32Exception) { }
    }

    private static void KillPid(int pid)
    {
        try
        {
            using var p = Process.GetProcessById(pid);
            p.Kill();
        }
        catch (ArgumentException) { } // already gone
        catch (InvalidOperationException) { }
        catch (System.ComponentModel.Win32Exception) { }
    }

    private static void TryDeleteFile(string path)
    {
        try { File.Delete(path); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    private static bool LinkExists(string name) => name.Length > 0 && Directory.Exists($"/sys/class/net/{name}");
    private static bool NetnsExists(string name) => File.Exists($"/run/netns/{name}");

    private static string Sanitize(string name) => new(name.Select(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '-' or '_' ? c : '_').ToArray());

    private static string Resolve(string name, params string[] candidates) => candidates.FirstOrDefault(File.Exists) ?? name;

    private int CheckHost(int i) =>
        i >= 0 && i < _namespaces.Length ? i : throw new ArgumentOutOfRangeException(nameof(i), i, $"hosts are 0..{_namespaces.Length - 1}");
}
