using System.Text.Json.Nodes;

namespace Dingo.Health;

/// <summary>One dependency a process needs to do its work: null when it is fine, else the sentence saying what is wrong.</summary>
public sealed record ReadinessCheck(string Name, Func<CancellationToken, Task<string?>> Probe);

/// <summary>What <see cref="Readiness"/> found: each check's name and its problem (null: fine).</summary>
public sealed record ReadinessReport(IReadOnlyList<(string Name, string? Problem)> Checks)
{
    public bool Ready => Checks.All(c => c.Problem is null);

    /// <summary>The first problem, for a one-line status (systemd's STATUS=, a log line).</summary>
    public string Summary => Ready ? "ready" : string.Join("; ", Checks.Where(c => c.Problem is not null).Select(c => $"{c.Name}: {c.Problem}"));

    /// <summary>{"ready": bool, "checks": {"etcd": "ok" | problem, ...}}: what /readyz answers.</summary>
    public JsonObject ToJson()
    {
        var checks = new JsonObject();
        foreach (var (name, problem) in Checks) checks[name] = problem ?? "ok";
        return new JsonObject { ["ready"] = Ready, ["checks"] = checks };
    }
}

/// <summary>
/// The readiness of a broker or cell (/readyz, systemd's READY=1): every check runs at once, each within a deadline
/// of its own, so one that hangs (etcd stopped, a runtime that does not answer) is reported as such instead of holding
/// the answer. A check that throws reports the exception's message.
/// </summary>
public sealed class Readiness(IReadOnlyList<ReadinessCheck> checks, TimeSpan perCheck)
{
    public IReadOnlyList<ReadinessCheck> Checks { get; } = checks;

    public async Task<ReadinessReport> CheckAsync(CancellationToken ct)
    {
        var results = await Task.WhenAll(Checks.Select(check => RunAsync(check, ct))).ConfigureAwait(false);
        return new ReadinessReport(results);
    }

    private async Task<(string, string?)> RunAsync(ReadinessCheck check, CancellationToken ct)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(perCheck);
        try
        {
            // WaitAsync: a probe that ignores its token still cannot hold the answer past the deadline.
            return (check.Name, await check.Probe(deadline.Token).WaitAsync(deadline.Token).ConfigureAwait(false));
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            return (check.Name, $"no answer within {perCheck.TotalSeconds:0.#}s");
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            return (check.Name, ex is Grpc.Core.RpcException rpc ? $"unavailable ({rpc.StatusCode}: {rpc.Status.Detail})" : ex.Message);
        }
    }
}
