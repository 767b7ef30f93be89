using System.Diagnostics;
using System.IO.MemoryMappedFiles;

namespace Dingo.Tests.Support;

/// <summary>The sweep of earlier runs' leftovers removes only what nothing uses.</summary>
public sealed class LeftoverSweepTests
{
    [Fact]
    public void Old_unused_server_folders_and_unmapped_postgres_segments_go_the_rest_stays()
    {
        Assert.True(Directory.Exists("/dev/shm"), "no /dev/shm here");
        var tag = Guid.NewGuid().ToString("N")[..12];
        var old = DateTime.UtcNow.AddHours(-1);
        var unused = Directory.CreateDirectory($"/dev/shm/dingo-test-etcd-sweep-{tag}-unused").FullName;
        var inUse = Directory.CreateDirectory($"/dev/shm/dingo-test-etcd-sweep-{tag}-inuse").FullName;
        var young = Directory.CreateDirectory($"/dev/shm/dingo-test-etcd-sweep-{tag}-young").FullName;
        var other = Directory.CreateDirectory($"/dev/shm/dingo-other-sweep-{tag}").FullName;
        // A podman service's folder (TestPodman) whose service is gone, in the temporary folder.
        var podmanUnused = Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), $"dingo-test-podman-{tag}")).FullName;
        File.WriteAllText(Path.Combine(podmanUnused, "service.log"), "");
        foreach (var d in new[] { unused, inUse, other, podmanUnused }) Directory.SetLastWriteTimeUtc(d, old);
        // Test platforms' data folders: an old one nothing uses, one a live process names, one with a file written lately.
        string Platform(bool touchedLately)
        {
            var dir = Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), "dingo-tests", Guid.NewGuid().ToString("N")[..12])).FullName;
            File.WriteAllText(Path.Combine(dir, "test.conf"), "");
            if (!touchedLately) File.SetLastWriteTimeUtc(Path.Combine(dir, "test.conf"), old);
            Directory.SetLastWriteTimeUtc(dir, old);
            return dir;
        }
        var (platformUnused, platformInUse, platformBusy) = (Platform(false), Platform(false), Platform(true));
        var orphan = $"/dev/shm/PostgreSQL.{Random.Shared.Next(1_000_000_000, int.MaxValue)}";
        var mappedFile = $"/dev/shm/PostgreSQL.{Random.Shared.Next(1_000_000_000, int.MaxValue)}";
        foreach (var f in new[] { orphan, mappedFile })
        {
            File.WriteAllBytes(f, new byte[4096]);
            File.SetLastWriteTimeUtc(f, old);
        }
        // A live process naming the folder, as etcd names its --data-dir.
        using var user = Process.Start(new ProcessStartInfo("bash", ["-c", "sleep 60; true", "holder", inUse, Path.Combine(platformInUse, "test.conf")]) { UseShellExecute = false })!;
        try
        {
            // Until it has exec'd, /proc shows the forked .NET process's command line, not bash's.
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while (!File.ReadAllText($"/proc/{user.Id}/cmdline").Contains(inUse, StringComparison.Ordinal))
            {
                Assert.True(DateTime.UtcNow < deadline, "sleep never showed its arguments in /proc");
                Thread.Sleep(10);
            }
            using (var map = MemoryMappedFile.CreateFromFile(mappedFile, FileMode.Open, null, 0, MemoryMappedFileAccess.ReadWrite))
            using (var view = map.CreateViewAccessor())
            {
                LeftoverSweep.Sweep();
                Assert.False(Directory.Exists(unused), "an old folder nothing uses was kept");
                Assert.False(Directory.Exists(podmanUnused), "an old podman service folder nothing uses was kept");
                Assert.True(Directory.Exists(inUse), "a folder a live process names was removed");
                Assert.True(Directory.Exists(young), "a folder made a moment ago was removed");
                Assert.True(Directory.Exists(other), "a folder of another kind was removed");
                Assert.False(File.Exists(orphan), "an unmapped PostgreSQL segment was kept");
                Assert.True(File.Exists(mappedFile), "a mapped PostgreSQL segment was removed");
                Assert.False(Directory.Exists(platformUnused), "an old test platform folder nothing uses was kept");
                Assert.True(Directory.Exists(platformInUse), "a test platform folder a live process names was removed");
                Assert.True(Directory.Exists(platformBusy), "a test platform folder written to lately was removed");
            }
        }
        finally
        {
            ProcessTree.Kill(user);
            foreach (var d in new[] { unused, inUse, young, other, podmanUnused, platformUnused, platformInUse, platformBusy }) if (Directory.Exists(d)) Directory.Delete(d, true);
            foreach (var f in new[] { orphan, mappedFile }) File.Delete(f);
        }
    }
}
