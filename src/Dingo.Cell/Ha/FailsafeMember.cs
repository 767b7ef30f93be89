using System.Text.Json;
using System.Text.Json.Nodes;
using Dingo.Model;

namespace Dingo.Ha;

/// <summary>
/// The failsafe piece of a node's HA loop (docs/ha.md, "failsafe"): a leader that cannot reach etcd asks every other
/// member, on its health API, whether it streams from it; a replica that does confirms, signed for that very ask with the
/// instance's key (<see cref="FailsafeProof"/>), and promises not to take the leader key for a TTL. The leader's policy
/// (when to ask, what a confirmation buys) stays with its agent.
/// </summary>
internal sealed class FailsafeMember
{
    private sealed record Promise(string Leader, long AtNs);
    private sealed record Key(string Password, FailsafeProof Proof);

    private readonly NodeSpec _spec;
    private readonly FenceGuardDirectory? _guard;
    private readonly HttpClient _http;
    // Read by the health API's threads as well as the pass: one reference each, swapped whole.
    private volatile Promise? _promise;
    private volatile Key? _key;

    /// <param name="guard">the cell's fencing guard: it keeps this node's promise across an agent restart</param>
    /// <param name="http">for the asks (the members' health APIs; HTTPS checked against the platform CAs with require-tls)</param>
    public FailsafeMember(NodeSpec spec, FenceGuardDirectory? guard, HttpClient http)
    {
        (_spec, _guard, _http) = (spec, guard, http);
        if (guard?.PromiseOf(spec.NodeId) is { } kept) _promise = new Promise(kept.Leader, kept.AtNs);
    }

    /// <summary>The leader this node confirmed less than <paramref name="ttl"/> ago (it must not take the key meanwhile), or null.</summary>
    public string? PromisedTo(TimeSpan ttl) =>
        _promise is { } p && Monotonic.Between(p.AtNs, Monotonic.NowNs()) < ttl ? p.Leader : null;

    /// <summary>Asks each member at once; returns why each that did not confirm did not (empty: every one confirmed).</summary>
    public async Task<IReadOnlyList<string>> AskAllAsync(InstanceRecord? record, IReadOnlyList<(string NodeId, string Host, int ApiPort)> members, CancellationToken ct)
    {
        var answers = await Task.WhenAll(members.Select(m => AskAsync(record, m.NodeId, m.Host, m.ApiPort, ct))).ConfigureAwait(false);
        return answers.OfType<string>().ToList();
    }

    /// <summary>
    /// Null when the member confirmed; otherwise why not. The ask is signed and the confirmation must be signed for this
    /// very ask: a 200 from anyone else is no confirmation.
    /// </summary>
    private async Task<string?> AskAsync(InstanceRecord? record, string nodeId, string host, int apiPort, CancellationToken ct)
    {
        if (record is null) return $"{nodeId}: no instance record to sign the ask with";
        var proof = ProofFor(record);
        var nonce = FailsafeProof.NewNonce();
        try
        {
            var query = $"leader={Uri.EscapeDataString(_spec.NodeId)}&nonce={nonce}&proof={proof.Ask(_spec.NodeId, nodeId, nonce)}";
            var uri = new UriBuilder(Dingo.Postgres.PlatformConnectionTls.Required ? "https" : "http", host, apiPort, "/failsafe") { Query = query }.Uri;
            using var response = await _http.PostAsync(uri, content: null, ct).ConfigureAwait(false);
            var body = await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode) return $"{nodeId}: {(int)response.StatusCode} {body}";
            return ConfirmationProblem(proof, _spec.NodeId, nodeId, nonce, body) is { } problem ? $"{nodeId}: {problem}" : null;
        }
        catch (Exception ex) when (ex is HttpRequestException or OperationCanceledException)
        {
            return $"{nodeId}: {ex.Message}";
        }
    }

    /// <summary>Null when <paramref name="body"/> is <paramref name="member"/>'s signed confirmation of this ask; otherwise why not.</summary>
    internal static string? ConfirmationProblem(FailsafeProof proof, string leader, string member, string nonce, string body)
    {
        try
        {
            var json = JsonNode.Parse(body);
            if (json?["confirmed"] is not JsonValue confirmed || !confirmed.TryGetValue<bool>(out var yes) || !yes)
                return "the answer does not confirm";
            var signed = json["proof"] is JsonValue p && p.TryGetValue<string>(out var text) ? text : null;
            return proof.IsConfirmation(leader, member, nonce, signed) ? null : "the confirmation is not signed with this instance's key for this ask (ignored)";
        }
        catch (JsonException)
        {
            return "the answer is not JSON";
        }
    }

    /// <summary>The instance's failsafe key, derived again only when the superuser's password changed.</summary>
    private FailsafeProof ProofFor(InstanceRecord record)
    {
        if (_key is { } known && known.Password == record.Superuser.Password) return known.Proof;
        var proof = FailsafeProof.For(_spec.InstanceId, record.Superuser);
        _key = new Key(record.Superuser.Password, proof);
        return proof;
    }

    /// <summary>
    /// A leader that cannot reach etcd asks: confirmed when this node streams from that leader right now (and then it
    /// promises not to take the leader key for a TTL); otherwise why not.
    /// </summary>
    /// <param name="observed">this node's last pass's observation</param>
    /// <param name="following">the leader this node was last configured to stream from</param>
    public FailsafeReply Answer(FailsafeAsk ask, InstanceRecord? record, HaInput? observed, string? following, TimeSpan ttl)
    {
        if (record is null) return FailsafeReply.Refused("no instance record yet");
        var proof = ProofFor(record);
        if (!proof.IsAsk(ask.Leader, _spec.NodeId, ask.Nonce, ask.Proof))
            return FailsafeReply.Unsigned("the ask is not signed with this instance's key");
        return Refusal(ask.Leader, observed, following, ttl) is { } refusal
            ? FailsafeReply.Refused(refusal)
            : FailsafeReply.Confirmed(proof.Confirm(ask.Leader, _spec.NodeId, ask.Nonce));
    }

    private string? Refusal(string leader, HaInput? observed, string? following, TimeSpan ttl)
    {
        if (observed is null) return "no observation yet";
        if (!observed.Local.Answering || !observed.Local.InRecovery) return "I am not a running replica";
        if (!observed.Local.Streaming || following != leader) return $"I do not stream from {leader} (following {following ?? "nobody"})";
        if (DateTimeOffset.UtcNow - observed.Now > ttl) return "my last observation is too old to tell";
        var at = Monotonic.NowNs();
        _promise = new Promise(leader, at);
        _guard?.Promise(_spec.NodeId, leader, at);
        return null;
    }
}
