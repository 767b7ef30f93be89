using Dingo.Tests.Support;
using static Dingo.Tests.Ha.WritableSampler;

namespace Dingo.Tests.Ha;

/// <summary>What the fault tests count as two writable nodes at once, on sample sequences written out by hand.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class SplitMomentsTests
{
    private static readonly DateTime T = new(2026, 12, 6, 9, 14, 29, DateTimeKind.Utc);

    private static Sample S(string node, int fromMs, int toMs, Seen seen, string? error = null) =>
        new(node, T.AddMilliseconds(fromMs), T.AddMilliseconds(toMs), seen, error);

    /// <summary>Every 100 ms from <paramref name="fromMs"/> to <paramref name="toMs"/>, each answered in 5 ms.</summary>
    private static IEnumerable<Sample> Every100(string node, int fromMs, int toMs, Seen seen, string? error = null)
    {
        for (var t = fromMs; t < toMs; t += 100) yield return S(node, t, t + 5, seen, error);
    }

    [Fact]
    public void A_killed_primary_whose_sampler_comes_round_late_is_no_split()
    {
        // The old primary a answers writable until 0.4 s, is killed at 0.45 s, and its sampler (starved on a loaded
        // machine) next asks at 1.2 s: refused. b is promoted at 0.75 s and answers writable from 0.8 s on.
        var samples = Every100("a", 0, 500, Seen.Writable)
            .Append(S("a", 1200, 1201, Seen.Unreachable, "Failed to connect to 127.0.0.1:5433"))
            .Concat(Every100("b", 0, 800, Seen.ReadOnly)).Concat(Every100("b", 800, 2000, Seen.Writable));
        Assert.Empty(AgentFaultTests.SplitMoments(samples));
    }

    [Fact]
    public void An_old_primary_still_answering_writable_after_the_new_one_was_seen_writable_is_a_split()
    {
        // a goes on accepting writes for 300 ms after b was seen writable at 0.805 s.
        var samples = Every100("a", 0, 1100, Seen.Writable)
            .Concat(Every100("b", 0, 800, Seen.ReadOnly)).Concat(Every100("b", 800, 2000, Seen.Writable));
        var split = AgentFaultTests.SplitMoments(samples);
        Assert.NotEmpty(split);
        // First proof: b's first writable answer lies between two of a's (0.7 s and 0.9 s).
        Assert.StartsWith("09:14:29.805: b answered writable (09:14:29.800-09:14:29.805) while a was writable (seen 09:14:29.705 and 09:14:29.900)", split[0], StringComparison.Ordinal);
        Assert.Contains(split, m => m.StartsWith("09:14:29.905: a answered writable", StringComparison.Ordinal));
    }

    [Fact]
    public void A_stopped_primary_that_resumes_writable_after_a_promotion_is_a_split_and_its_timeouts_hide_nothing()
    {
        // a is stopped (SIGSTOP) from 0.5 s: its samples time out. b is promoted at 2.5 s. a resumes writable at 3 s.
        var samples = Every100("a", 0, 500, Seen.Writable)
            .Concat(Every100("a", 500, 3000, Seen.Unreachable, "Timeout during reading attempt"))
            .Concat(Every100("a", 3000, 3500, Seen.Writable))
            .Concat(Every100("b", 0, 2500, Seen.ReadOnly)).Concat(Every100("b", 2500, 4000, Seen.Writable));
        Assert.NotEmpty(AgentFaultTests.SplitMoments(samples));
    }

    [Fact]
    public void A_new_primary_seen_refusing_between_two_writable_answers_breaks_the_proof()
    {
        // b restarts (refused at 1.0-1.2 s) while a answers writable at 1.1 s: b was not writable then.
        var samples = new[]
        {
            S("b", 0, 5, Seen.Writable), S("b", 1000, 1001, Seen.Unreachable, "Connection refused"),
            S("b", 1200, 1205, Seen.Writable), S("a", 1100, 1105, Seen.Writable),
        };
        Assert.Empty(AgentFaultTests.SplitMoments(samples));
        // Without the refusal the same answers prove b writable across a's.
        Assert.NotEmpty(AgentFaultTests.SplitMoments(samples.Where(s => s.Seen != Seen.Unreachable)));
    }

    [Fact]
    public void A_clean_switch_over_with_both_samplers_on_time_is_no_split()
    {
        var samples = Every100("a", 0, 1000, Seen.Writable).Concat(Every100("a", 1000, 3000, Seen.ReadOnly))
            .Concat(Every100("b", 0, 1050, Seen.ReadOnly)).Concat(Every100("b", 1050, 3000, Seen.Writable));
        Assert.Empty(AgentFaultTests.SplitMoments(samples));
    }
}
