using System.Text.Json;
using Dingo.Cells;
using Dingo.Health;
using Dingo.Model;
using Dingo.Postgres;
using Dingo.Store;
using Microsoft.Extensions.Logging;

namespace Dingo.Ha;

/// <summary>
/// The observe piece of a node's HA pass: a leader's renewal first, then this node's PostgreSQL (the runtime, the probe)
/// and the cluster in etcd (one read), into the <see cref="HaInput"/> that <see cref="Failover.Decide"/> takes. What it
/// must remember between passes is only how long things have been so (not answering, not streaming, starts that failed).
/// </summary>
/// <param name="http">for the members' health APIs (HTTPS checked against the platform CAs with require-tls)</param>
internal sealed class NodeObserver(AgentState state, LeaderLease lease, LeaderKey key, FailsafeMember failsafe, HttpClient http)
{
    /// <summary>Since when (monotonic ns) a running PostgreSQL has not answered the probe (0: it answers).</summary>
    private long _notAnsweringSinceNs;
    private bool _seenRunning;
    private readonly PostmasterWatch _watch = new(state);

    private string NodeId => state.Spec.NodeId;
    private string InstanceId => state.Spec.InstanceId;
    private Keys K => state.K;

    /// <summary>Wakes a pass when the PostgreSQL this agent saw answering ends.</summary>
    public PostmasterWatch Watch => _watch;

    /// <summary>What etcd said this pass, filled as it is read: a read cut short keeps what came before the cut.</summary>
    private sealed class EtcdRead
    {
        public bool Renewed;
        public LeaderRecord? Leader;
        public long LeaderKeyLease, LeaderRevision;
        public long? Optime;
        public SyncState? Sync;
        public SwitchoverRequest? Switchover;
        public bool Initialised, Candidate;
        public string? InitialisedBy;
        public List<NodeStatus> Members = [];
    }

    public async Task<HaInput> ObserveAsync(InstanceRecord record, PostgresProbe probe, CancellationToken etcd, CancellationToken ct)
    {
        var now = DateTimeOffset.UtcNow;
        var (reachable, renewed) = await RenewFirstAsync(etcd, ct).ConfigureAwait(false);
        state.Pass.Mark(lease.Held || renewed ? "renew" : "start");
        // A late renewal (on its own budget, RenewFirstAsync) that came after the pass's etcd deadline had passed moved that
        // deadline: the rest of the observation counts to the new one (NodeAgent does the same for the rest of the pass).
        using var renewedFence = renewed ? lease.FenceAfterLateRenewal(etcd, ct) : null;
        if (renewedFence is not null) etcd = renewedFence.Token;
        // The guard's deadline moves with the renewal at once, not after the probe and the read: on a loaded machine a
        // probe of 1.9 s left the guard on the previous pass's deadline, and it stopped a primary whose lease this pass
        // had just renewed (fresh315: a second failover while a cell restarted beside a suite at full load).
        if (renewed) await lease.ArmAsync(ct).ConfigureAwait(false);
        RuntimeNode? mine;
        PostgresObservation? pg;
        long askedNs;
        if (_inspected is { Running: true } seen && state.LastPg is not null && Monotonic.Between(_inspectedNs, Monotonic.NowNs()) < InspectReuse)
        {
            // PostgreSQL answered the last pass and the runtime found it running a moment ago: it is asked first, and its
            // answer proves the node runs. Only when it does not answer does the runtime look (a container engine's
            // inspect is a call into podman: 2 per node a second during a burst of provisions, bench/Provision).
            askedNs = Monotonic.NowNs();
            pg = await ProbeAsync(probe, etcd, ct).ConfigureAwait(false);
            mine = pg is not null ? seen : await InspectAsync(ct).ConfigureAwait(false);
        }
        else
        {
            mine = await InspectAsync(ct).ConfigureAwait(false);
            askedNs = Monotonic.NowNs();
            pg = mine is { Running: true } ? await ProbeAsync(probe, etcd, ct).ConfigureAwait(false) : null;
        }
        state.LastPg = pg;
        if (pg is not null) await _watch.WatchAsync(ct).ConfigureAwait(false);
        NoteLocal(mine, pg, askedNs);
        // PostgreSQL answered, late: that is progress, and the lease is renewed on it before the decision counts the time
        // since the last renewal (the same pass otherwise demoted its own primary, "not renewed for 2.0s", for the time
        // its probe waited for a CPU). A PostgreSQL that does not answer gets no renewal here: it is fenced as before.
        if (renewed && pg is not null) await RenewOnProgressAsync(etcd, ct).ConfigureAwait(false);
        var cluster = new EtcdRead { Renewed = renewed };
        // Past (or at) the fencing deadline, a leader's read gets a short budget of its own, as its probe does: a pass slowed
        // before the read (a container engine's inspect on a saturated machine) must learn whether etcd answers, or it
        // would take its own spent deadline for an etcd that is gone and demote a primary it could still renew for.
        // (Made only then: a source and a timer for every pass of every node otherwise.)
        using var late = lease.Held && lease.UntilFencing() < state.Ha.Ttl / 8 ? CancellationTokenSource.CreateLinkedTokenSource(ct) : null;
        late?.CancelAfter(state.Ha.Ttl / 8);
        var guardedBefore = state.Others.Count > 0;
        if (reachable) reachable = await ReadClusterAsync(cluster, late?.Token ?? etcd, ct).ConfigureAwait(false);
        // Failsafe keeps a working primary: one that does not answer itself (hung, stopped) is not kept this way (its
        // replicas may not have noticed yet that nothing comes).
        state.Pass.Mark("read");
        var kept = !reachable && pg is { InRecovery: false } && lease.Guarded && await lease.ConfirmFailsafeAsync(ct).ConfigureAwait(false);
        // Armed again only when the read changed what the arming depends on: a lease it adopted, failsafe, or the first
        // member placed (or the last removed) since the last pass. The renewal above armed it already otherwise.
        if (kept || cluster.Renewed && (!renewed || guardedBefore != state.Others.Count > 0)) await lease.ArmAsync(ct).ConfigureAwait(false);
        return Input(record, mine, pg, cluster, reachable, kept, now);
    }

    /// <summary>
    /// Before taking a free key: this node's and every running member's WAL position as they are now — a member's asked of
    /// its agent (<c>GET /wal-position</c> on its health API), or of its PostgreSQL directly when the agent cannot say —
    /// on a budget of a quarter TTL (the key is free: every moment of it is a moment without a primary). A member that
    /// does not answer in time keeps its reported position, as before this check.
    /// </summary>
    public async Task<HaInput> WithLivePositionsAsync(HaInput input, InstanceRecord record, PostgresProbe probe, CancellationToken ct)
    {
        using var budget = CancellationTokenSource.CreateLinkedTokenSource(ct);
        budget.CancelAfter(state.Ha.Ttl / 4);
        var asked = input.Members.Where(m => m.State == NodeState.Running && Failover.IsFresh(input, m, state.Ha)).ToList();
        var answers = await Task.WhenAll(asked.Select(m => AskMemberAsync(m, record, budget.Token, ct)).Append(AskAsync(NodeId, probe, budget.Token, ct))).ConfigureAwait(false);
        foreach (var (nodeId, _, error) in answers.Where(a => a.Error is not null && a.NodeId != NodeId))
            state.Logger.LogWarning("node {Node}: could not ask {Member} its WAL position before taking the leader key ({Error}): its report decides", NodeId, nodeId, error);
        var live = answers.Where(a => a.Lsn is not null && a.NodeId != NodeId).ToDictionary(a => a.NodeId, a => a.Lsn!.Value);
        return Failover.WithLivePositions(input, answers.Single(a => a.NodeId == NodeId).Lsn, live);
    }

    private static async Task<(string NodeId, long? Lsn, string? Error)> AskAsync(string nodeId, PostgresProbe of, CancellationToken budget, CancellationToken ct)
    {
        try { return (nodeId, await of.WalPositionAsync(budget).WaitAsync(budget).ConfigureAwait(false), null); }
        catch (Exception ex) when (ex is Npgsql.NpgsqlException or TimeoutException or System.Net.Sockets.SocketException or InvalidOperationException or System.IO.IOException
                                   || (ex is OperationCanceledException && !ct.IsCancellationRequested))
        {
            return (nodeId, null, ex is OperationCanceledException ? "no answer in time" : ex.Message);
        }
    }

    /// <summary>
    /// A member's WAL-position endpoint; null when its reported host is no host name or address (a damaged report), so
    /// that member's PostgreSQL is asked instead and the pass goes on, rather than the pass failing on every other node.
    /// </summary>
    internal static Uri? WalPositionUri(string host, int port, bool tls)
    {
        if (Uri.CheckHostName(host) is not (UriHostNameType.Dns or UriHostNameType.IPv4 or UriHostNameType.IPv6)) return null;
        try { return new UriBuilder(tls ? "https" : "http", host, port, "/wal-position").Uri; }
        catch (Exception ex) when (ex is UriFormatException or ArgumentOutOfRangeException) { return null; }
    }

    /// <summary>Its agent first (one query on its warm pooled session); PostgreSQL itself when the agent cannot say.</summary>
    private async Task<(string NodeId, long? Lsn, string? Error)> AskMemberAsync(NodeStatus m, InstanceRecord record, CancellationToken budget, CancellationToken ct)
    {
        if (state.Peers.FirstOrDefault(p => p.NodeId == m.NodeId) is { Host: { } host, ApiPort: > 0 } peer
            && WalPositionUri(host, peer.ApiPort, PlatformConnectionTls.Required) is { } uri)
        {
            try
            {
                using var response = await http.GetAsync(uri, budget).ConfigureAwait(false);
                if (response.IsSuccessStatusCode
                    && System.Text.Json.Nodes.JsonNode.Parse(await response.Content.ReadAsStringAsync(budget).ConfigureAwait(false))?["wal_position"] is System.Text.Json.Nodes.JsonValue value
                    && value.TryGetValue<long>(out var lsn))
                    return (m.NodeId, lsn, null);
            }
            catch (Exception ex) when (ex is HttpRequestException or JsonException || (ex is OperationCanceledException && !ct.IsCancellationRequested))
            {
                if (budget.IsCancellationRequested) return (m.NodeId, null, "no answer in time");
            }
        }
        return await AskAsync(m.NodeId, new PostgresProbe(m.Host, m.Port, record.Superuser), budget, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// A leader renews first thing: the renewal says this pass runs, and PostgreSQL's health has rules of its own (a hung
    /// primary demotes). Renewing after the slower observations made a loaded machine's leaders fence.
    /// </summary>
    private async Task<(bool Reachable, bool Renewed)> RenewFirstAsync(CancellationToken etcd, CancellationToken ct)
    {
        if (!lease.Held) return (true, false);
        try
        {
            // At most half of what is left before fencing (and a quarter TTL): an etcd that does not answer must leave
            // the pass time to look at PostgreSQL and, in failsafe, to ask the other members.
            // Within an eighth of a TTL of the fencing deadline, or past it (the last pass ran long on a saturated machine),
            // an eighth of a TTL of its own, as a late probe and a late read get: half of what was left (0.15 s in
            // ThreeHostTests, fresh323) was less than one etcd answer took there, and the pass took the failed renewal
            // for an etcd that is gone, skipped the read and demoted a primary etcd would have renewed. The guard keeps
            // the deadline meanwhile.
            var late = state.Others.Count > 0 && lease.UntilFencing() < state.Ha.Ttl / 8;
            using var renewal = CancellationTokenSource.CreateLinkedTokenSource(late ? ct : etcd);
            var budget = late ? state.Ha.Ttl / 8
                : state.Others.Count > 0 ? TimeSpan.FromTicks(Math.Min(lease.UntilFencing().Ticks / 2, (state.Ha.Ttl / 4).Ticks)) : state.Ha.Ttl;
            renewal.CancelAfter(budget > TimeSpan.Zero ? budget : TimeSpan.FromMilliseconds(100));
            if (await lease.RenewAsync(renewal.Token).ConfigureAwait(false)) return (true, true);
            // (etcd revokes a lease it did not see renewed for a TTL, as after a hang longer than that, while failsafe
            // kept the primary serving.)
            state.Logger.LogWarning("node {Node}: my leader lease expired", NodeId);
            lease.Expired();
            return (true, false);
        }
        catch (Exception ex) when (AgentState.EtcdUnreachable(ex, ct))
        {
            return (false, false);
        }
    }

    /// <summary>A renewal after a slow observation (<see cref="LeaderLease.RenewOnProgressAsync"/>); an etcd that does not answer is left to the read.</summary>
    private async Task RenewOnProgressAsync(CancellationToken etcd, CancellationToken ct)
    {
        try { await lease.RenewOnProgressAsync(etcd).ConfigureAwait(false); }
        catch (Exception ex) when (AgentState.EtcdUnreachable(ex, ct)) { }
    }

    /// <summary>How long a runtime look that found the node running stands in for the next ones while PostgreSQL answers.</summary>
    internal static readonly TimeSpan InspectReuse = TimeSpan.FromSeconds(5);

    private RuntimeNode? _inspected;
    private long _inspectedNs;

    private async Task<RuntimeNode?> InspectAsync(CancellationToken ct)
    {
        var node = await state.Runtime.InspectAsync(NodeId, ct).ConfigureAwait(false);
        (_inspected, _inspectedNs) = (node, Monotonic.NowNs());
        state.Pass.Mark("inspect");
        return node;
    }

    /// <summary>Asks the running PostgreSQL how it is; null when it does not answer in time.</summary>
    private async Task<PostgresObservation?> ProbeAsync(PostgresProbe probe, CancellationToken etcd, CancellationToken ct)
    {
        PostgresObservation? pg = null;
        // While leading, a PostgreSQL that does not answer (hung, stopped) must not hold the pass past the fencing deadline.
        // WaitAsync on a probe the pass never cancels (PostgresProbe.ObserveDetached): Npgsql's own cancellation asks the
        // server to cancel, which a stopped server never answers and a saturated one pays a fork for.
        // Past (or at) the fencing deadline a leader still needs to know whether its PostgreSQL answers (failsafe
        // keeps only one that does): a short budget of its own; the guard keeps the deadline meanwhile.
        using var late = CancellationTokenSource.CreateLinkedTokenSource(ct);
        late.CancelAfter(!lease.Held ? state.Ha.Ttl / 2 : state.Ha.Ttl / 8);
        // A node that does not lead has nothing to fence: its probe gets its own budget, not what the pass's etcd calls
        // left of theirs (a hung etcd must not make a healthy replica look dead: failsafe asks replicas about it).
        var probing = !lease.Held || lease.UntilFencing() < state.Ha.Ttl / 8 ? late.Token : etcd;
        try { pg = await probe.ObserveDetached().WaitAsync(probing).ConfigureAwait(false); }
        catch (Exception ex) when (ex is Npgsql.NpgsqlException or TimeoutException or System.Net.Sockets.SocketException or InvalidOperationException
                                   || (ex is OperationCanceledException && !ct.IsCancellationRequested)) { }
        state.Pass.Mark("probe");
        return pg;
    }

    /// <summary>
    /// What the runtime and the probe say of this node over time: restarts, failed starts, how long not answering or
    /// streaming. A PostgreSQL that did not answer has not answered since it was asked (<paramref name="askedNs"/>): a hung
    /// one holds the probe for its whole budget, and counting from the end of it said "not answered for 0.0s" after 2 s.
    /// </summary>
    private void NoteLocal(RuntimeNode? mine, PostgresObservation? pg, long askedNs)
    {
        if (mine is { Running: true } && pg is null) { if (_notAnsweringSinceNs == 0) _notAnsweringSinceNs = askedNs; }
        else _notAnsweringSinceNs = 0;
        if (mine is { Running: false } && _seenRunning)
        {
            state.Restarts++;
            _seenRunning = false;
            state.ForgetLeading();
            state.Logger.LogWarning("node {Node}: PostgreSQL is not running ({Detail}) (restart #{Count})", NodeId, mine.Detail, state.Restarts);
            state.Events?.Record(InstanceId, NodeId, EventKind.PostgresRestarted, $"PostgreSQL was found not running ({mine.Detail}): restart #{state.Restarts}");
        }
        if (pg is not null)
        {
            _seenRunning = true;
            state.AwaitingStart = false;
            state.FailedStarts = 0;
        }
        else if (mine is { Running: false } && state.AwaitingStart)
        {
            state.AwaitingStart = false;
            state.StartFailed($"PostgreSQL exited before accepting connections ({mine.Detail})");
        }
        if (pg is { InRecovery: true, Streaming: false }) state.NotStreamingSince ??= DateTime.UtcNow;
        else state.NotStreamingSince = null;
    }

    /// <summary>
    /// The cluster's keys, the members' reports, the node specs and the instance record: one read, at one revision.
    /// False when etcd did not answer (what was read before it stopped stays in <paramref name="view"/>).
    /// </summary>
    private async Task<bool> ReadClusterAsync(EtcdRead view, CancellationToken etcd, CancellationToken ct)
    {
        try
        {
            var (read, keys, _) = await state.Store.ReadManyRawAsync([K.Cluster(InstanceId), K.Statuses(InstanceId), K.Nodes(InstanceId)],
                [K.Instance(InstanceId)], etcd).ConfigureAwait(false);
            // The next pass decides with this record; none: the instance is being deleted (RunPassAsync ends this pass).
            state.Record = keys[0] is { } instance ? EtcdStore.Decode<InstanceRecord>(instance).Value : null;
            ReadClusterKeys(view, read[0]);
            await AdoptLeaseAsync(view, etcd).ConfigureAwait(false);
            var members = read[1].Select(m => EtcdStore.Decode<NodeStatus>(m).Value).Where(m => m.NodeId != NodeId).ToList();
            var specs = read[2].Select(n => EtcdStore.Decode<NodeSpec>(n).Value)
                .OrderBy(n => n.CreatedAt).ThenBy(n => n.NodeId, StringComparer.Ordinal).ToList();
            view.Candidate = specs.FirstOrDefault()?.NodeId == NodeId;
            state.Others = specs.Where(s => s.NodeId != NodeId).Select(s => s.NodeId).ToList();
            // Only members of the cluster as it is now count (a removed node's last report may linger).
            view.Members = members = members.Where(m => specs.Any(s => s.NodeId == m.NodeId)).ToList();
            state.Peers = specs.Where(s => s.NodeId != NodeId).Select(s => (s.NodeId, members.FirstOrDefault(m => m.NodeId == s.NodeId)?.Host, s.ApiPort)).ToList();
            // Only a member that reports data could take over: one that has not reported (a replica just placed, whose cell
            // has not passed yet; a cell gone, whose reports went with its lease) could not take the key now. Should this
            // leader die before such a member reports data, the member waits for the long lease to lapse (bench/Provision's
            // Docker burst: a new cluster's primary moved to the short lease beside a replica not yet reported, and one
            // late probe fenced it with nobody to take over). The members read are the other members' reports, so: none
            // of them says it has data.
            state.NoneCouldTakeOver = members.All(m => m.NoData);
            // A leader whose members could now take over (or no longer could) moves its key to a lease of the TTL that
            // applies: a short one as soon as a replica has data, a long one while nobody could (PassCadence, Failover.FenceAfter).
            if (view.Renewed && view.Leader is { } held && held.NodeId == NodeId && view.LeaderKeyLease == lease.Id && lease.Alone != state.NoneCouldTakeOver)
                await key.MoveToLeaseAsync(held, view.LeaderRevision, etcd).ConfigureAwait(false);
            lease.EtcdReachable();
            return true;
        }
        catch (Exception ex) when (AgentState.EtcdUnreachable(ex, ct))
        {
            return false;
        }
    }

    private void ReadClusterKeys(EtcdRead view, IEnumerable<Versioned<string>> cluster)
    {
        foreach (var kv in cluster.Select(EtcdStore.Decode<JsonElement>))
        {
            switch (kv.Key[K.Cluster(InstanceId).Length..])
            {
                case "leader":
                    view.Leader = kv.Value.Deserialize<LeaderRecord>(Json.Options);
                    (view.LeaderKeyLease, view.LeaderRevision) = (kv.Lease, kv.ModRevision);
                    break;
                case "optime": view.Optime = kv.Value.GetInt64(); break;
                case "sync": view.Sync = kv.Value.Deserialize<SyncState>(Json.Options); break;
                case "switchover": view.Switchover = kv.Value.Deserialize<SwitchoverRequest>(Json.Options); break;
                case "initialize":
                    view.Initialised = true;
                    view.InitialisedBy = kv.Value.ValueKind == JsonValueKind.String ? kv.Value.GetString() : null;
                    break;
            }
        }
    }

    /// <summary>
    /// The key names this node under a lease this process did not take: the agent restarted (SIGKILL, a crash) while
    /// PostgreSQL went on. The lease is still alive, so nobody else can lead: carry on with it instead of giving up a
    /// working primary.
    /// </summary>
    private async Task AdoptLeaseAsync(EtcdRead view, CancellationToken etcd)
    {
        if (lease.Held || view.Leader?.NodeId != NodeId || view.LeaderKeyLease == 0 || view.LeaderKeyLease == lease.Abandoned) return;
        var sent = Monotonic.NowNs();
        var ttl = await state.Store.KeepAliveOnceTtlAsync(view.LeaderKeyLease, etcd).ConfigureAwait(false);
        if (ttl <= 0) return;
        // Its TTL says what it was granted for (etcd may round a TTL up, never to an alone lease's).
        lease.Adopt(view.LeaderKeyLease, ttl >= Math.Ceiling(state.Ha.AloneTtl.TotalSeconds) && state.Ha.AloneTtl > state.Ha.Ttl, sent);
        view.Renewed = true;
        state.Logger.LogInformation("node {Node}: adopted the leader lease of {Instance} (the agent restarted while this node led)", NodeId, InstanceId);
    }

    private HaInput Input(InstanceRecord record, RuntimeNode? mine, PostgresObservation? pg, EtcdRead cluster, bool reachable, bool kept, DateTimeOffset now)
    {
        var local = new LocalState(
            DataInitialised: mine?.Initialised == true,
            Running: mine?.Running == true,
            Answering: pg is not null,
            InRecovery: pg?.InRecovery ?? true,
            Lsn: pg?.Lsn ?? 0,
            Timeline: pg?.Timeline ?? 0,
            Streaming: pg is { InRecovery: true, Streaming: true },
            FollowingNodeId: state.Following,
            NotStreamingFor: state.NotStreamingSince is { } since ? DateTime.UtcNow - since : TimeSpan.Zero,
            RewindFailed: state.RewindFailed)
        {
            NotAnsweringFor = _notAnsweringSinceNs == 0 ? TimeSpan.Zero : Monotonic.Between(_notAnsweringSinceNs, Monotonic.NowNs()),
            StartingReadOnly = state.AwaitingStart,
            FailedStarts = state.FailedStarts,
            StartFailure = state.StartFailure,
        };
        var plan = Catalog.FindPlan(record.PlanId);
        state.StoreSync = SynchronousCommit.StoreSync(record);
        state.Synchronous = SynchronousCommit.Synchronous(plan?.Synchronous == true, state.StoreSync, record.NodeCount);
        return new HaInput(NodeId, state.Synchronous, local, reachable, cluster.Leader, lease.Held, lease.SinceRenewal,
            cluster.Optime, cluster.Sync, cluster.Members, cluster.Switchover, cluster.Initialised, cluster.Candidate, now)
        {
            InitialisedBy = cluster.InitialisedBy,
            RestoreFrom = record.Restore?.InstanceId,
            Alone = state.Others.Count == 0,
            LeaseTtl = lease.Ttl,
            Failsafe = kept,
            FailsafePromisedTo = failsafe.PromisedTo(state.Ha.Ttl),
        };
    }
}
