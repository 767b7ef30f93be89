using Dingo.Config;
using Dingo.Ha;
using Dingo.Tests.Support;

namespace Dingo.Tests.Ha;

/// <summary>
/// The guard's rule for a leader whose whole cell died (<see cref="DeadLeader"/>), case by case, and the files it is
/// told through. FenceGuardTests shows the same rule carried out by a guard process against etcd and PostgreSQL,
/// FailoverTests on a killed cell.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class DeadLeaderTests
{
    private static readonly TimeSpan Grace = TimeSpan.FromSeconds(2);

    [Theory]
    // owner gone, postmaster alive, key known, synchronous, dead for (ms) → release, sentence contains
    [InlineData(false, false, true, true, 5000, false, null)]                       // the cell runs: its agent decides (rule 4)
    [InlineData(true, true, true, true, 5000, false, null)]                         // only the agent died: a restarted one renews (lease bridge)
    [InlineData(false, true, true, false, 0, false, null)]                          // all well
    [InlineData(true, false, false, true, 5000, false, "left to expire")]           // an arming without the key's lease
    [InlineData(true, false, true, true, 0, true, "synchronous standby holds every acknowledged commit")]
    [InlineData(true, false, true, false, 0, false, "stays 2.0s for the cell to come back")]
    [InlineData(true, false, true, false, 1999, false, "for the cell to come back")]
    [InlineData(true, false, true, false, 2000, true, "gone for 2.0s")]
    [InlineData(true, false, true, false, 2500, true, "commits not yet streamed may be lost")]
    public void Decides_from_what_the_guard_saw(bool ownerGone, bool postmasterAlive, bool keyKnown, bool synchronous, int deadForMs, bool release, string? says)
    {
        var verdict = DeadLeader.Decide(new DeadLeader.Seen(ownerGone, postmasterAlive, keyKnown, synchronous, TimeSpan.FromMilliseconds(deadForMs)), Grace);
        Assert.Equal(release, verdict.Release);
        if (says is null) Assert.Null(verdict.Sentence);
        else Assert.Contains(says, verdict.Sentence, StringComparison.Ordinal);
    }

    [Fact]
    public void No_grace_releases_an_asynchronous_clusters_dead_leader_at_once()
    {
        var verdict = DeadLeader.Decide(new DeadLeader.Seen(true, false, true, false, TimeSpan.Zero), TimeSpan.Zero);
        Assert.True(verdict.Release);
    }

    [Fact]
    public async Task The_cell_tells_its_guard_how_to_reach_etcd_and_which_leaders_are_synchronous_through_files()
    {
        var dir = Path.Combine(Path.GetTempPath(), "dingo-deadleader-" + Guid.NewGuid().ToString("N")[..10]);
        try
        {
            var settings = new GuardSettings(["https://10.0.0.1:2379", "https://10.0.0.2:2379"], "/dingo-x",
                new EtcdTlsSettings { CaFile = "/etc/dingo/ca.pem", CertFile = "/etc/dingo/c.pem", KeyFile = "/etc/dingo/k.pem" },
                TimeSpan.FromSeconds(4), TimeSpan.FromMilliseconds(1500), new EventSettings { PerInstance = 7 }, "cell-9");
            var guard = new FenceGuardDirectory(dir, launch: null, settings);
            Assert.Null(guard.ReadSettings());
            // Without a launch command no guard starts, but the settings and the owner are written all the same.
            Assert.False(await guard.EnsureGuardRunningAsync(TimeSpan.FromMilliseconds(50), CancellationToken.None));
            var read = guard.ReadSettings()!;
            Assert.Equal(settings.EtcdEndpoints, read.EtcdEndpoints);
            Assert.Equal(settings with { EtcdEndpoints = read.EtcdEndpoints }, read);
            Assert.False(guard.OwnerGone());

            Assert.False(guard.MarkedSynchronous("n-1"));
            guard.MarkSynchronous("n-1", true);
            Assert.True(guard.MarkedSynchronous("n-1"));
            guard.MarkSynchronous("n-1", false);
            Assert.False(guard.MarkedSynchronous("n-1"));
            guard.MarkSynchronous("n-1", true);
            guard.Disarm("n-1");
            Assert.False(guard.MarkedSynchronous("n-1"));
            Assert.Throws<ArgumentException>(() => guard.MarkSynchronous("../n-1", true));

            File.WriteAllText(Path.Combine(dir, FenceGuardDirectory.SettingsFile), "{ not json");
            Assert.Null(guard.ReadSettings());
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
