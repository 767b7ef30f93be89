using System.Globalization;
using System.Diagnostics;
using Dingo.Cells;
using Dingo.Config;
using Docker.DotNet;
using Docker.DotNet.Models;

namespace Dingo.Tests.Support;

/// <summary>
/// One podman service speaking the Docker Engine API for the whole test run (machine-recipes.md): started with
/// CONTAINERS_CONF giving default_ulimits = [] (raising rlimits is not permitted here) and `--runtime runc` (crun fails
/// on this cgroup layout), on a socket in a temporary folder; it ends with the test process (<see cref="RunProcesses"/>). Builds the
/// local node image (deploy/images/build-local.sh) once when it is missing. Never skips: without podman it fails and
/// says how to get it.
/// </summary>
public static class TestPodman
{
    public const string Image = "localhost/dingo/postgres:15";

    private static readonly Lazy<string> Service = new(Start, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>unix:///… of the run's podman service (started on first use).</summary>
    public static string Endpoint => Service.Value;

    public static DockerClient Client() => new DockerClientConfiguration(new Uri(Endpoint)).CreateClient();

    /// <summary>Docker settings for a test cell on the run's podman, under a platform label of the test's own.</summary>
    public static DockerSettings Settings(string platform) => new()
    {
        Endpoint = Endpoint,
        Image = Image,
        Pull = "never",
        Platform = platform,
        StopTimeout = TimeSpan.FromSeconds(10),
    };

    /// <summary>
    /// The CPU ceiling the kernel applies to a container's process now (its cgroup's CFS quota over period; null: none),
    /// which podman's inspect does not show once the running container's ceiling was changed.
    /// </summary>
    public static async Task<double?> CpuCeilingAsync(long pid)
    {
        foreach (var line in await File.ReadAllLinesAsync($"/proc/{pid}/cgroup"))
        {
            var parts = line.Split(':', 3);
            if (parts.Length != 3) continue;
            if (parts[0] == "0" && parts[1].Length == 0 && File.Exists($"/sys/fs/cgroup/{parts[2].TrimStart('/')}/cpu.max"))
            {
                var max = (await File.ReadAllTextAsync($"/sys/fs/cgroup/{parts[2].TrimStart('/')}/cpu.max")).Split(' ');
                return max[0] == "max" ? null : double.Parse(max[0], CultureInfo.InvariantCulture) / double.Parse(max[1], CultureInfo.InvariantCulture);
            }
            if (!parts[1].Split(',').Contains("cpu")) continue;
            foreach (var mount in new[] { "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct" })
            {
                var dir = mount + parts[2];
                if (!File.Exists(dir + "/cpu.cfs_quota_us")) continue;
                var quota = long.Parse((await File.ReadAllTextAsync(dir + "/cpu.cfs_quota_us")).Trim(), CultureInfo.InvariantCulture);
                var period = long.Parse((await File.ReadAllTextAsync(dir + "/cpu.cfs_period_us")).Trim(), CultureInfo.InvariantCulture);
                return quota < 0 ? null : (double)quota / period;
            }
        }
        throw new InvalidOperationException($"no CPU cgroup found for process {pid}");
    }

    private static string Podman()
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':'))
        {
            var path = Path.Combine(dir, "podman");
            if (File.Exists(path)) return path;
        }
        throw new InvalidOperationException(
            "podman is not installed: the Docker runtime tests run against podman's Docker-compatible service. " +
            "Run `./dingo test` (it installs podman and runc with apt), or `apt-get install podman runc`.");
    }

    private static string Start()
    {
        if (!File.Exists("/usr/sbin/runc") && !File.Exists("/usr/bin/runc"))
            throw new InvalidOperationException("runc is not installed (podman's crun fails on this machine's cgroups): run `./dingo test` or `apt-get install runc`.");
        var (endpoint, _, client) = Launch();
        using (client) EnsureImage(client);
        return endpoint;
    }

    /// <summary>A second podman service (same storage, so the same containers) that a test may kill to make "the engine" vanish.</summary>
    /// <param name="tcp">serve on tcp://127.0.0.1:port instead of a unix socket (plain TCP: a test of the endpoint kind)</param>
    public static (string Endpoint, Process Process) StartExtraService(bool tcp = false)
    {
        _ = Endpoint;
        var (endpoint, process, client) = Launch(tcp);
        client.Dispose();
        return (endpoint, process);
    }

    private static (string Endpoint, Process Process, DockerClient Client) Launch(bool tcp = false)
    {
        var podman = Podman();
        var dir = Path.Combine(Path.GetTempPath(), $"dingo-test-podman-{Guid.NewGuid():N}"[..32]);
        Directory.CreateDirectory(dir);
        var conf = Path.Combine(dir, "containers.conf");
        File.WriteAllText(conf, "[containers]\ndefault_ulimits = []\n");
        _conf ??= conf;
        var socket = Path.Combine(dir, "podman.sock");
        var endpoint = tcp ? $"tcp://127.0.0.1:{FreePorts.One()}" : $"unix://{socket}";
        var log = new StreamWriter(Path.Combine(dir, "service.log")) { AutoFlush = true };
        // DINGO_TEST_PODMAN_LOG_LEVEL=debug: the service logs every API request it serves (its dir's service.log).
        var level = Environment.GetEnvironmentVariable("DINGO_TEST_PODMAN_LOG_LEVEL") is { Length: > 0 } l ? l : "warn";
        var process = RunProcesses.Start(podman, ["--runtime", "runc", "--log-level", level, "system", "service", "--time=0", endpoint], dir,
            new Dictionary<string, string> { ["CONTAINERS_CONF"] = conf }, line => { lock (log) log.WriteLine(line); });

        var client = new DockerClientConfiguration(new Uri(endpoint)).CreateClient();
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            try
            {
                client.System.PingAsync().GetAwaiter().GetResult();
                return (endpoint, process, client);
            }
            catch (Exception) when (DateTime.UtcNow < deadline && !process.HasExited)
            {
                Thread.Sleep(100);
            }
            catch (Exception e)
            {
                client.Dispose();
                throw new InvalidOperationException($"podman system service did not answer on {socket} within 30 s (see {dir}/service.log)", e);
            }
        }
    }

    private static void EnsureImage(DockerClient client)
    {
        try
        {
            client.Images.InspectImageAsync(Image).GetAwaiter().GetResult();
            return;
        }
        catch (DockerImageNotFoundException)
        {
        }
        catch (DockerApiException e) when (e.StatusCode == System.Net.HttpStatusCode.NotFound)
        {
        }
        var script = Path.Combine(TestPlatform.RepoRoot(), "deploy", "images", "build-local.sh");
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(script);
        psi.ArgumentList.Add(Image);
        using var build = Process.Start(psi) ?? throw new InvalidOperationException($"could not run {script}");
        var stderr = build.StandardError.ReadToEndAsync();
        build.StandardOutput.ReadToEnd();
        if (!build.WaitForExit(300_000)) throw new InvalidOperationException($"{script} did not finish in 5 minutes");
        if (build.ExitCode != 0) throw new InvalidOperationException($"{script} failed ({build.ExitCode}): {stderr.Result}");
    }

    /// <summary>Removes every container and volume a test platform made (by its platform label), running or not.</summary>
    public static async Task RemovePlatformAsync(string platform)
    {
        if (!Service.IsValueCreated) return;
        using var client = Client();
        var filter = new Dictionary<string, IDictionary<string, bool>> { ["label"] = new Dictionary<string, bool> { [$"{DockerRuntime.PlatformLabel}={platform}"] = true } };
        foreach (var c in await client.Containers.ListContainersAsync(new ContainersListParameters { All = true, Filters = filter }))
        {
            try { await client.Containers.RemoveContainerAsync(c.ID, new ContainerRemoveParameters { Force = true, RemoveVolumes = true }); }
            catch (DockerApiException) { }
        }
        foreach (var v in (await client.Volumes.ListAsync(new VolumesListParameters { Filters = filter })).Volumes ?? [])
        {
            try { await client.Volumes.RemoveAsync(v.Name, true); }
            catch (DockerApiException) { }
        }
    }

    private static string? _conf;

    /// <summary>
    /// Runs a container's health check once, as the engine's scheduler would: `podman healthcheck run` on the run's
    /// storage, which records the result in the container's state (what Docker's inspect shows as State.Health). podman
    /// 4.3 schedules health checks with systemd timers, and this machine runs no systemd, so nothing runs them by itself.
    /// Returns podman's exit code (0 healthy, 1 unhealthy) and what it printed.
    /// </summary>
    public static async Task<(int ExitCode, string Output)> RunHealthcheckAsync(string containerId, CancellationToken ct)
    {
        _ = Endpoint;
        var psi = new ProcessStartInfo(Podman()) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in new[] { "--runtime", "runc", "healthcheck", "run", containerId }) psi.ArgumentList.Add(arg);
        psi.Environment["CONTAINERS_CONF"] = _conf;
        using var run = Process.Start(psi) ?? throw new InvalidOperationException("could not run podman healthcheck run");
        try
        {
            var stdout = run.StandardOutput.ReadToEndAsync(ct);
            var stderr = run.StandardError.ReadToEndAsync(ct);
            await run.WaitForExitAsync(ct);
            return (run.ExitCode, (await stdout + await stderr).Trim());
        }
        finally
        {
            if (!run.HasExited) run.Kill(entireProcessTree: true);
        }
    }

    /// <summary>kill -9 of a container's main process (PostgreSQL), from the host, as a crash would.</summary>
    public static Task KillMainProcessAsync(string containerId) => SignalMainProcessAsync(containerId, SIGKILL);

    public const int SIGKILL = 9, SIGSTOP = 19, SIGCONT = 18;

    /// <summary>Sends a signal (SIGKILL, SIGSTOP, SIGCONT) to a container's main process (PostgreSQL), from the host.</summary>
    public static async Task SignalMainProcessAsync(string containerId, int signal)
    {
        using var client = Client();
        var pid = (await client.Containers.InspectContainerAsync(containerId)).State.Pid;
        if (pid <= 0) throw new InvalidOperationException($"container {containerId} has no main process");
        if (kill((int)pid, signal) != 0) throw new InvalidOperationException($"kill({pid}, {signal}) failed: errno {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()}");
    }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);
}
