namespace Dingo.Ha;

/// <summary>How long each step of a promotion took, for the log line that tells an operator where a failover's time went.</summary>
internal sealed class StepTimes
{
    private readonly long _startNs = Monotonic.NowNs();
    private long _lastNs;
    private readonly List<(string Step, TimeSpan Took)> _steps = [];

    /// <param name="before">steps taken before this was started, shown first but not counted in the total</param>
    public StepTimes(params (string Step, TimeSpan Took)[] before)
    {
        _lastNs = _startNs;
        _steps.AddRange(before);
    }

    public void Mark(string step)
    {
        var now = Monotonic.NowNs();
        _steps.Add((step, Monotonic.Between(_lastNs, now)));
        _lastNs = now;
    }

    public TimeSpan Total => Monotonic.Between(_startNs, _lastNs);

    public override string ToString() =>
        $"{Total.TotalMilliseconds:0} ms ("
        + string.Join(", ", _steps.Select(s => $"{s.Step} {s.Took.TotalMilliseconds:0}")) + ")";
}
