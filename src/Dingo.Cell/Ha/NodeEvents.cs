using Dingo.Model;

namespace Dingo.Ha;

/// <summary>
/// The instance's history as a node's HA pass tells it: the pass's step when it changes something (a bootstrap, a clone,
/// taking or releasing the leader key, a promotion, a demotion, a switchover, a rewind, a re-clone), with its sentence and
/// its failure if it failed. Steady passes (lead, follow, wait, start) are not events.
/// </summary>
internal sealed class NodeEvents(AgentState state)
{
    private (string Kind, string Sentence, DateTimeOffset At)? _last;

    public void Record(HaAction action, string? failure)
    {
        if (state.Events is not { } events || action is HaAction.Lead or HaAction.FollowLeader or HaAction.Wait or HaAction.Start) return;
        var kind = Dingo.Health.CellMetrics.DecisionName(action);
        var sentence = failure is null ? action.Sentence : $"{action.Sentence} — failed: {failure}";
        var now = DateTimeOffset.UtcNow;
        // A step repeated pass after pass (a demotion while etcd stays away, whose sentence counts the seconds) is one
        // event per 10 s at most, and the very same sentence one per minute.
        if (_last is { } last && last.Kind == kind
            && (now - last.At < TimeSpan.FromSeconds(10) || last.Sentence == sentence && now - last.At < TimeSpan.FromMinutes(1))) return;
        _last = (kind, sentence, now);
        events.Record(state.Spec.InstanceId, state.Spec.NodeId, kind, sentence);
    }
}
