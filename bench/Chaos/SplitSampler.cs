using Dingo.Model;
using Dingo.Store;
using Npgsql;

namespace Dingo.Bench.Chaos;

/// <summary>What one node said at one sampling moment (connected straight to it, not through the router).</summary>
/// <param name="Answered">it answered within the sample's timeout</param>
/// <param name="Writable">pg_is_in_recovery() = false</param>
/// <param name="Streaming">its WAL receiver is streaming</param>
/// <param name="SenderPort">the port its WAL receiver streams from (0: none)</param>
internal sealed record NodeAnswer(string NodeId, int Port, bool Answered, bool Writable, bool Streaming, int SenderPort);

/// <summary>One sampling moment of one instance: every node it had placed, asked at once.</summary>
internal sealed record Sample(DateTime At, string InstanceId, IReadOnlyList<NodeAnswer> Nodes)
{
    public int Writable => Nodes.Count(n => n.Writable);
    public bool Split => Writable >= 2;
    public bool Unanswered => Nodes.Any(n => !n.Answered);
}

/// <summary>
/// Asks every node of the bench's instances, every <see cref="Every"/>, whether it is writable
/// (<c>pg_is_in_recovery()</c>) and whether it streams, each on a connection of its own kept open between samples,
/// as the instance's superuser from etcd. A node that does not answer within <see cref="AnswerWithin"/> counts as
/// not writable and makes the sample "unanswered"; a node still busy with an earlier question is not asked again.
/// The list of nodes comes from etcd, re-read every second; while etcd does not answer the last list is used.
/// </summary>
internal sealed class SplitSampler : IAsyncDisposable
{
    public static readonly TimeSpan Every = TimeSpan.FromMilliseconds(100);
    public static readonly TimeSpan AnswerWithin = TimeSpan.FromMilliseconds(500);
    private static readonly TimeSpan RefreshEvery = TimeSpan.FromSeconds(1);
    private const string Question = "SELECT pg_is_in_recovery(), coalesce((SELECT status FROM pg_stat_wal_receiver), ''), coalesce((SELECT sender_port FROM pg_stat_wal_receiver), 0)";

    private sealed class Probe(string nodeId, string host, int port)
    {
        public string NodeId { get; } = nodeId;
        public string Host { get; } = host;
        public int Port { get; } = port;
        public NpgsqlConnection? Connection;
        public Task<NodeAnswer>? Pending;
    }

    private readonly EtcdStore _store;
    private readonly IReadOnlyDictionary<string, Credentials> _superusers;
    private readonly Dictionary<string, Dictionary<string, Probe>> _probes = [];
    private readonly Dictionary<string, string> _cellAddresses = [];
    private readonly List<Sample> _samples = [];
    private readonly Dictionary<string, Sample> _latest = [];
    private readonly CancellationTokenSource _stop = new();
    private Task? _sampling;
    private Task? _refreshing;

    /// <param name="superusers">instance id → its superuser</param>
    public SplitSampler(EtcdStore store, IReadOnlyDictionary<string, Credentials> superusers)
    {
        _store = store;
        _superusers = superusers;
        foreach (var id in superusers.Keys) _probes[id] = [];
    }

    public async Task StartAsync(CancellationToken ct)
    {
        await RefreshAsync(ct);
        _refreshing = Task.Run(() => RefreshLoopAsync(_stop.Token), CancellationToken.None);
        _sampling = Task.Run(() => SampleLoopAsync(_stop.Token), CancellationToken.None);
    }

    public Sample? Latest(string instanceId)
    {
        lock (_samples) return _latest.GetValueOrDefault(instanceId);
    }

    public (int Split, int Unanswered, int Samples) Count(DateTime from, DateTime to)
    {
        lock (_samples)
        {
            var window = _samples.Where(s => s.At >= from && s.At <= to).ToList();
            return (window.Count(s => s.Split), window.Count(s => s.Unanswered), window.Count);
        }
    }

    /// <summary>The split samples themselves (which nodes were writable, when), for the log.</summary>
    public IReadOnlyList<Sample> Splits(DateTime from, DateTime to)
    {
        lock (_samples) return _samples.Where(s => s.At >= from && s.At <= to && s.Split).ToList();
    }

    private async Task RefreshLoopAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(RefreshEvery, ct);
                await RefreshAsync(ct);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { break; }
            catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
            {
                // etcd stopped, killed or slow: keep sampling the nodes known last.
            }
        }
    }

    private async Task RefreshAsync(CancellationToken ct)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(TimeSpan.FromSeconds(1));
        foreach (var cell in await _store.ListAsync<CellInfo>(_store.Keys.Cells, limit.Token).WaitAsync(limit.Token))
            _cellAddresses[cell.Value.Id] = cell.Value.Address;
        var placed = new Dictionary<string, IReadOnlyList<NodeSpec>>();
        foreach (var id in _superusers.Keys)
            placed[id] = (await _store.ListAsync<NodeSpec>(_store.Keys.Nodes(id), limit.Token).WaitAsync(limit.Token)).Select(n => n.Value).ToList();
        var dropped = new List<Probe>();
        lock (_samples)
        {
            foreach (var (id, nodes) in placed)
            {
                var probes = _probes[id];
                foreach (var gone in probes.Keys.Except(nodes.Select(n => n.NodeId)).ToList())
                {
                    dropped.Add(probes[gone]);
                    probes.Remove(gone);
                }
                foreach (var node in nodes)
                {
                    if (!_cellAddresses.TryGetValue(node.CellId, out var host)) continue;
                    if (probes.TryGetValue(node.NodeId, out var known) && known.Host == host && known.Port == node.Port) continue;
                    if (known is not null) dropped.Add(known);
                    probes[node.NodeId] = new Probe(node.NodeId, host, node.Port);
                }
            }
        }
        foreach (var probe in dropped) _ = CloseWhenIdleAsync(probe);
    }

    private async Task SampleLoopAsync(CancellationToken ct)
    {
        var next = DateTime.UtcNow;
        while (!ct.IsCancellationRequested)
        {
            next += Every;
            var at = DateTime.UtcNow;
            List<(string Id, List<Probe> Probes)> round;
            lock (_samples) round = _probes.Select(p => (p.Key, p.Value.Values.ToList())).ToList();
            var asked = round.Select(async r =>
            {
                var answers = await Task.WhenAll(r.Probes.Select(p => AskAsync(r.Id, p, ct)));
                return new Sample(at, r.Id, answers);
            }).ToList();
            try
            {
                var samples = await Task.WhenAll(asked);
                lock (_samples)
                {
                    foreach (var s in samples)
                    {
                        _samples.Add(s);
                        _latest[s.InstanceId] = s;
                    }
                }
                var wait = next - DateTime.UtcNow;
                if (wait > TimeSpan.Zero) await Task.Delay(wait, ct);
                else next = DateTime.UtcNow;
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { break; }
        }
    }

    /// <summary>The node's answer, or "unanswered" once <see cref="AnswerWithin"/> has passed (the question stays pending).</summary>
    private async Task<NodeAnswer> AskAsync(string instanceId, Probe probe, CancellationToken ct)
    {
        var unanswered = new NodeAnswer(probe.NodeId, probe.Port, Answered: false, Writable: false, Streaming: false, SenderPort: 0);
        if (probe.Pending is { IsCompleted: false }) return unanswered;
        probe.Pending = QuestionAsync(instanceId, probe, ct);
        try { return await probe.Pending.WaitAsync(AnswerWithin + TimeSpan.FromMilliseconds(100), ct); }
        catch (TimeoutException) { return unanswered; }
    }

    private async Task<NodeAnswer> QuestionAsync(string instanceId, Probe probe, CancellationToken ct)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(AnswerWithin);
        try
        {
            if (probe.Connection is null)
            {
                var superuser = _superusers[instanceId];
                probe.Connection = new NpgsqlConnection(new NpgsqlConnectionStringBuilder
                {
                    Host = probe.Host, Port = probe.Port, Username = superuser.Username, Password = superuser.Password,
                    Database = "postgres", Pooling = false, Timeout = 2, CommandTimeout = 2,
                    // A cancelled question breaks the connection at once instead of waiting for the server to agree.
                    CancellationTimeout = -1,
                }.ConnectionString);
                await probe.Connection.OpenAsync(limit.Token);
            }
            await using var command = new NpgsqlCommand(Question, probe.Connection);
            await using var reader = await command.ExecuteReaderAsync(limit.Token);
            await reader.ReadAsync(limit.Token);
            var inRecovery = reader.GetBoolean(0);
            return new NodeAnswer(probe.NodeId, probe.Port, Answered: true, Writable: !inRecovery,
                Streaming: reader.GetString(1) == "streaming", SenderPort: reader.GetInt32(2));
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            if (probe.Connection is { } broken)
            {
                probe.Connection = null;
                await broken.DisposeAsync();
            }
            return new NodeAnswer(probe.NodeId, probe.Port, Answered: false, Writable: false, Streaming: false, SenderPort: 0);
        }
    }

    private static async Task CloseWhenIdleAsync(Probe probe)
    {
        try { if (probe.Pending is { } pending) await pending.WaitAsync(TimeSpan.FromSeconds(10)); }
        catch (Exception) { /* it is closed below either way */ }
        if (probe.Connection is { } c) await c.DisposeAsync();
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        foreach (var task in new[] { _sampling, _refreshing })
        {
            if (task is null) continue;
            try { await task.WaitAsync(TimeSpan.FromSeconds(10)); }
            catch (Exception ex) when (ex is OperationCanceledException or TimeoutException) { }
        }
        List<Probe> all;
        lock (_samples) all = _probes.Values.SelectMany(p => p.Values).ToList();
        foreach (var probe in all) await CloseWhenIdleAsync(probe);
        _stop.Dispose();
    }
}
