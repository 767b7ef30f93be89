namespace Dingo.Tests.Support;

/// <summary>
/// How the suite runs its etcd servers: the way etcd's own guidance asks a deployment to run it (docs/deploy.md), on
/// storage with low fsync latency and ahead of the other processes for CPU. The suite runs dozens of PostgreSQL
/// servers, WAL archivers and .NET processes on two cores and one disk; an etcd sharing both with them at equal footing
/// answered lease renewals seconds late ("server is likely overloaded"), and the HA loops, rightly, fenced primaries
/// that nothing had made fail. That measured the test machine, not the product.
/// </summary>
public static class EtcdForTests
{
    /// <summary>Where etcd data folders go: memory (/dev/shm) when the machine has it, so fsync never waits on the disk.</summary>
    public static string DataRoot { get; } = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();

    // Before this run's first server: what killed earlier runs left in that memory (Support/LeftoverSweep).
    static EtcdForTests() => LeftoverSweep.Once();

    private const string Nice = "/usr/bin/nice";

    /// <summary>
    /// The program and arguments that start etcd with <paramref name="args"/>: through `nice -n -10` as root (nice execs,
    /// so the process id is etcd's own and signals sent to it reach etcd), or etcd itself otherwise.
    /// </summary>
    public static (string File, List<string> Args) Command(IEnumerable<string> args)
    {
        if (Environment.UserName == "root" && File.Exists(Nice)) return (Nice, ["-n", "-10", "/usr/bin/etcd", .. args]);
        return ("/usr/bin/etcd", [.. args]);
    }
}
