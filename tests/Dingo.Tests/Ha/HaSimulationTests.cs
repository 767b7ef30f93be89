using Dingo.Tests.Support;
using Akka.Actor;
using Akka.Configuration;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using Dingo.Config;
using Dingo.Ha;
using Dingo.Model;

namespace Dingo.Tests.Ha;

/// <summary>
/// The HA decision over time, simulated: each node is an actor whose loop runs <see cref="Failover.Decide"/> on
/// virtual time (TestKit's TestScheduler) against an in-memory etcd with real lease expiry. Each test is a story;
/// every step checks that at most one node accepts writes.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class HaSimulationTests : TestKit
{
    private static readonly Akka.Configuration.Config VirtualTime =
        ConfigurationFactory.ParseString("akka.scheduler.implementation = \"Akka.TestKit.TestScheduler, Akka.TestKit\"");

    private static readonly HaSettings Settings = new()
    {
        Ttl = TimeSpan.FromSeconds(4), LoopWait = TimeSpan.FromMilliseconds(500), MaximumLagOnFailover = 1024 * 1024,
        RewindAfter = TimeSpan.FromSeconds(8), LostCellGrace = TimeSpan.FromSeconds(60),
    };

    public HaSimulationTests() : base(VirtualTime) { }

    private TestScheduler Clock => (TestScheduler)Sys.Scheduler;

    // ---------- the simulated world ----------

    private sealed class SimNode(string id)
    {
        public string Id { get; } = id;
        public bool Alive = true;          // the cell and its PostgreSQL run
        public bool ReachesEtcd = true;
        public bool InRecovery = true;
        public long Lsn;
        public long LagBehind;             // a replica this far behind the leader
        public string? Following;
        public bool HoldsLease;
        public DateTimeOffset LastRenewal = DateTimeOffset.MinValue;
        public string LastSentence = "";
        public bool Writable => Alive && !InRecovery;
    }

    private sealed class World(DateTimeOffset start)
    {
        public readonly object Gate = new();
        public DateTimeOffset Now = start;
        public (string NodeId, DateTimeOffset Expires)? LeaderKey;
        public long? Optime;
        public SyncState? Sync;
        public bool Synchronous;
        public readonly Dictionary<string, SimNode> Nodes = new();
        public readonly Dictionary<string, NodeStatus> Statuses = new();
        public readonly List<string> Log = new();

        public (string NodeId, DateTimeOffset Expires)? LiveKey => LeaderKey is { } k && k.Expires > Now ? k : null;
    }

    private sealed record Tick;
    private sealed record Stepped(string NodeId, string Sentence);

    private sealed class SimNodeActor : ReceiveActor, IWithTimers
    {
        public ITimerScheduler Timers { get; set; } = null!;

        public SimNodeActor(World world, SimNode node, IActorRef probe)
        {
            Receive<Tick>(_ =>
            {
                string sentence;
                lock (world.Gate) sentence = Step(world, node);
                // Schedule the next loop before reporting: the test advances virtual time as soon as every node
                // has reported, and a timer started after that would miss the step.
                Timers.StartSingleTimer("loop", new Tick(), Settings.LoopWait);
                probe.Tell(new Stepped(node.Id, sentence));
            });
        }
    }

    /// <summary>One pass of one node: what the real NodeAgent observes, the real decision, and its effect on the world.</summary>
    private static string Step(World w, SimNode n)
    {
        if (!n.Alive) return "dead";
        var key = w.LiveKey;
        if (n.ReachesEtcd && n.HoldsLease)
        {
            if (key?.NodeId == n.Id) { w.LeaderKey = (n.Id, w.Now + Settings.Ttl); n.LastRenewal = w.Now; key = w.LiveKey; }
            else n.HoldsLease = false; // expired
        }
        // Replicas following the live leader stream its WAL (minus their lag).
        if (n.InRecovery && n.Following is { } f && w.Nodes[f] is { Writable: true } leaderNode && n.ReachesEtcd)
            n.Lsn = Math.Max(n.Lsn, leaderNode.Lsn - n.LagBehind);
        var input = new HaInput(
            n.Id, w.Synchronous,
            new LocalState(true, true, true, n.InRecovery, n.Lsn, 1, n.InRecovery && n.Following is not null && w.Nodes[n.Following].Writable, n.Following, TimeSpan.Zero, false),
            n.ReachesEtcd,
            n.ReachesEtcd && key is { } k ? new LeaderRecord { NodeId = k.NodeId, Host = "sim", Port = 1 } : null,
            n.HoldsLease,
            n.LastRenewal == DateTimeOffset.MinValue ? TimeSpan.MaxValue : w.Now - n.LastRenewal,
            w.Optime, w.Sync,
            n.ReachesEtcd ? w.Statuses.Values.Where(s => s.NodeId != n.Id).ToList() : [],
            null, true, false, w.Now);
        var action = Failover.Decide(input, Settings);
        switch (action)
        {
            case HaAction.TakeLeadership when w.LiveKey is null:
                w.LeaderKey = (n.Id, w.Now + Settings.Ttl);
                n.HoldsLease = true;
                n.LastRenewal = w.Now;
                n.InRecovery = false;
                n.Following = null;
                w.Log.Add($"{w.Now:ss.fff} {n.Id} took the key and promoted");
                break;
            case HaAction.Promote:
                n.InRecovery = false;
                break;
            case HaAction.Demote d:
                n.InRecovery = true;
                n.HoldsLease = false;
                n.Following = d.Leader?.NodeId;
                w.Log.Add($"{w.Now:ss.fff} {n.Id} demoted: {d.Sentence}");
                break;
            case HaAction.FollowLeader f2:
                n.Following = f2.Leader.NodeId;
                break;
            case HaAction.ReleaseStaleKey:
                if (w.LeaderKey?.NodeId == n.Id) w.LeaderKey = null;
                n.HoldsLease = false;
                break;
        }
        if (n.ReachesEtcd)
        {
            if (n.Writable && w.LiveKey?.NodeId == n.Id) { w.Optime = n.Lsn; if (w.Synchronous) w.Sync = new SyncState(w.Nodes.Keys.Where(x => x != n.Id).Order().ToList(), n.Id); }
            w.Statuses[n.Id] = new NodeStatus
            {
                NodeId = n.Id, InstanceId = "sim", CellId = "c-" + n.Id, State = NodeState.Running, Detail = action.Sentence, Host = "sim", Port = 1,
                Role = n.InRecovery ? NodeRole.Replica : NodeRole.Primary, Lsn = n.Lsn, Streaming = input.Local.Streaming, UpdatedAt = w.Now,
            };
        }
        n.LastSentence = action.Sentence;
        return action.Sentence;
    }

    // ---------- driving the story ----------

    private World _world = null!;
    private TestProbe _probe = null!;

    private void Cluster(bool synchronous, params string[] ids)
    {
        _world = new World(Clock.Now) { Synchronous = synchronous };
        _probe = CreateTestProbe();
        foreach (var id in ids) _world.Nodes[id] = new SimNode(id);
        // n1 starts as the leader, the others stream from it.
        var first = _world.Nodes[ids[0]];
        first.InRecovery = false;
        first.HoldsLease = true;
        first.LastRenewal = _world.Now;
        first.Lsn = 1000;
        _world.LeaderKey = (first.Id, _world.Now + Settings.Ttl);
        foreach (var other in ids.Skip(1)) { _world.Nodes[other].Following = first.Id; _world.Nodes[other].Lsn = 1000; }
        if (synchronous) _world.Sync = new SyncState(ids.Skip(1).ToList(), first.Id);
        foreach (var node in _world.Nodes.Values) Sys.ActorOf(Props.Create(() => new SimNodeActor(_world, node, _probe.Ref))).Tell(new Tick());
        AllStepped();
    }

    private void AllStepped()
    {
        for (var i = 0; i < _world.Nodes.Count; i++) _probe.ExpectMsg<Stepped>(TimeSpan.FromSeconds(15));
    }

    /// <summary>Advances virtual time loop by loop; the leader writes each loop; asserts at most one writable node at every step.</summary>
    private void Run(TimeSpan duration, Action<TimeSpan>? eachStep = null)
    {
        var elapsed = TimeSpan.Zero;
        while (elapsed < duration)
        {
            lock (_world.Gate)
            {
                foreach (var n in _world.Nodes.Values.Where(n => n.Writable)) n.Lsn += 100; // the application writes
            }
            Clock.Advance(Settings.LoopWait);
            lock (_world.Gate) _world.Now = Clock.Now;
            elapsed += Settings.LoopWait;
            AllStepped();
            lock (_world.Gate)
            {
                var writable = _world.Nodes.Values.Where(n => n.Writable).Select(n => n.Id).ToList();
                Assert.True(writable.Count <= 1, $"at {_world.Now:ss.fff} two nodes accept writes: {string.Join(", ", writable)}\n{string.Join("\n", _world.Log)}");
            }
            eachStep?.Invoke(elapsed);
        }
    }

    private string? Writable() { lock (_world.Gate) return _world.Nodes.Values.SingleOrDefault(n => n.Writable)?.Id; }

    // ---------- the stories ----------

    [Fact]
    public void Leader_lost_the_most_advanced_replica_takes_over_once_the_lease_expires()
    {
        Cluster(false, "n1", "n2", "n3");
        Run(TimeSpan.FromSeconds(2));
        lock (_world.Gate)
        {
            _world.Nodes["n1"].Alive = false;        // the whole cell dies: no renewals, no PostgreSQL
            _world.Nodes["n3"].LagBehind = 50;       // n2 is the more advanced replica
        }
        TimeSpan? tookOver = null;
        Run(TimeSpan.FromSeconds(8), t => tookOver ??= Writable() is not null ? t : null);
        Assert.Equal("n2", Writable());
        Assert.NotNull(tookOver);
        Assert.InRange(tookOver!.Value, Settings.Ttl - Settings.LoopWait, Settings.Ttl + Settings.LoopWait * 3);
        Assert.Equal("n2", _world.Nodes["n3"].Following);
    }

    [Fact]
    public void Leader_partitioned_from_etcd_demotes_itself_before_any_replica_promotes()
    {
        Cluster(false, "n1", "n2", "n3");
        Run(TimeSpan.FromSeconds(2));
        lock (_world.Gate) _world.Nodes["n1"].ReachesEtcd = false;
        TimeSpan? demoted = null, promoted = null;
        Run(TimeSpan.FromSeconds(8), t =>
        {
            lock (_world.Gate)
            {
                demoted ??= !_world.Nodes["n1"].Writable ? t : null;
                promoted ??= _world.Nodes.Values.Any(n => n.Id != "n1" && n.Writable) ? t : null;
            }
        });
        Assert.NotNull(demoted);
        Assert.NotNull(promoted);
        Assert.True(demoted < promoted, $"demoted at {demoted}, a replica promoted at {promoted}");
        Assert.True(demoted <= Settings.Ttl / 2 + Settings.LoopWait, $"fencing must happen by half the TTL: {demoted}");
        Assert.Contains(_world.Log, l => l.Contains("n1 demoted: demoting: cannot reach etcd to renew the leader key"));
        Assert.Equal("no action: etcd unreachable, staying a replica", _world.Nodes["n1"].LastSentence);
    }

    [Fact]
    public void Two_candidates_racing_for_a_free_key_give_exactly_one_leader()
    {
        Cluster(false, "n1", "n2", "n3");
        Run(TimeSpan.FromSeconds(1));
        lock (_world.Gate)
        {
            _world.Nodes["n1"].Alive = false;
            // n2 and n3 are exactly as advanced, and each misses the other's report: both will try.
            _world.Nodes["n3"].Lsn = _world.Nodes["n2"].Lsn;
            _world.Statuses.Clear();
        }
        Run(TimeSpan.FromSeconds(8));
        var leader = Writable();
        Assert.NotNull(leader);
        Assert.Single(_world.Log, l => l.Contains("took the key"));
        var loser = leader == "n2" ? "n3" : "n2";
        Assert.Equal(leader, _world.Nodes[loser].Following);
    }

    [Fact]
    public void A_replica_lagging_past_the_bound_is_refused_and_waits()
    {
        Cluster(false, "n1", "n2");
        Run(TimeSpan.FromSeconds(1));
        lock (_world.Gate)
        {
            _world.Nodes["n2"].LagBehind = 5 * 1024 * 1024; // 5 MB behind, the bound is 1 MB
            _world.Nodes["n1"].Lsn += 5 * 1024 * 1024;
        }
        Run(TimeSpan.FromSeconds(1));
        lock (_world.Gate) _world.Nodes["n1"].Alive = false;
        Run(TimeSpan.FromSeconds(10));
        Assert.Null(Writable());
        Assert.Contains("lags", _world.Nodes["n2"].LastSentence);
        Assert.Contains("limit 1048576 B", _world.Nodes["n2"].LastSentence);
    }

    [Fact]
    public void Only_a_synchronous_standby_may_take_over_on_cluster_ha()
    {
        Cluster(true, "n1", "n2", "n3");
        Run(TimeSpan.FromSeconds(1));
        lock (_world.Gate)
        {
            _world.Nodes["n1"].Alive = false;
            _world.Sync = new SyncState(["n3"], "n1"); // only n3 may hold every acknowledged commit
            _world.Nodes["n2"].Lsn = _world.Nodes["n3"].Lsn + 10; // n2 even looks more advanced
        }
        Run(TimeSpan.FromSeconds(8));
        Assert.Equal("n3", Writable());
        Assert.Equal("n3", _world.Nodes["n2"].Following);
    }

    [Fact]
    public void Etcd_flapping_briefly_never_demotes_a_healthy_leader()
    {
        Cluster(false, "n1", "n2", "n3");
        for (var flap = 0; flap < 5; flap++)
        {
            lock (_world.Gate) _world.Nodes["n1"].ReachesEtcd = false;
            Run(TimeSpan.FromSeconds(1)); // shorter than half the TTL
            lock (_world.Gate) _world.Nodes["n1"].ReachesEtcd = true;
            Run(TimeSpan.FromSeconds(1));
            Assert.Equal("n1", Writable());
        }
        Assert.DoesNotContain(_world.Log, l => l.Contains("demoted") || l.Contains("took the key"));
        Assert.Equal("no action: I hold the leader key", _world.Nodes["n1"].LastSentence);
    }
}
