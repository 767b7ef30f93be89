using Dingo.Logging;
using Dingo.Tests.Support;

namespace Dingo.Tests.Logging;

/// <summary><see cref="LogLines"/> on real files: whole lines only, a truncated (rotated) file read again, a bounded read.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class LogLinesTests : IDisposable
{
    private readonly string _file = Path.Combine(Path.GetTempPath(), $"dingo-loglines-{Guid.NewGuid():N}.log");

    public void Dispose() => File.Delete(_file);

    [Fact]
    public void Whole_lines_only_then_the_rest_once_it_ends()
    {
        File.WriteAllText(_file, "one\ntwo\nthr");
        var (lines, next) = LogLines.Since(_file, 0, 1024);
        Assert.Equal(["one", "two"], lines);
        Assert.Equal(8, next);
        File.AppendAllText(_file, "ee\n\nfour\n");
        (lines, next) = LogLines.Since(_file, next, 1024);
        Assert.Equal(["three", "four"], lines);
        (lines, var again) = LogLines.Since(_file, next, 1024);
        Assert.Empty(lines);
        Assert.Equal(next, again);
    }

    [Fact]
    public void A_file_truncated_in_place_is_read_again_from_its_start()
    {
        File.WriteAllText(_file, "old line one\nold line two\n");
        var (_, next) = LogLines.Since(_file, 0, 1024);
        using (var truncate = new FileStream(_file, FileMode.Open, FileAccess.Write, FileShare.ReadWrite)) truncate.SetLength(0);
        File.AppendAllText(_file, "new\n");
        var (lines, after) = LogLines.Since(_file, next, 1024);
        Assert.Equal(["new"], lines);
        Assert.Equal(4, after);
    }

    [Fact]
    public void A_read_is_bounded_and_a_line_longer_than_the_bound_is_skipped()
    {
        File.WriteAllText(_file, new string('x', 100) + "\nshort\n");
        var (lines, next) = LogLines.Since(_file, 0, 50);
        Assert.Empty(lines);
        Assert.Equal(50, next);
        (lines, next) = LogLines.Since(_file, next, 50);
        Assert.Empty(lines);
        Assert.Equal(100, next);
        (lines, _) = LogLines.Since(_file, next, 50);
        Assert.Equal(["short"], lines);
    }

    [Fact]
    public void The_last_lines_and_where_to_follow_from()
    {
        File.WriteAllLines(_file, Enumerable.Range(1, 10).Select(i => $"line {i}"));
        var (lines, next) = LogLines.Last(_file, 3);
        Assert.Equal(["line 8", "line 9", "line 10"], lines);
        Assert.Equal(new FileInfo(_file).Length, next);
    }
}
