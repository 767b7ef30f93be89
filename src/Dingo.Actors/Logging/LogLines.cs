using System.Text;

namespace Dingo.Logging;

/// <summary>
/// Whole lines a log file gained since an offset: what a cell ships over syslog each second and what
/// <c>dingo logs -f</c> prints. A line still being written waits for the next read; a file now shorter than the offset
/// was truncated (rotated in place) or replaced, and is read again from its start.
/// </summary>
public static class LogLines
{
    /// <param name="limit">bytes read at most: a flood waits for the next read, never fills memory</param>
    /// <returns>the lines (without their newline, empty ones left out) and the offset to read from next</returns>
    public static (IReadOnlyList<string> Lines, long Next) Since(string file, long offset, int limit)
    {
        using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        if (stream.Length < offset) offset = 0;
        stream.Seek(offset, SeekOrigin.Begin);
        var buffer = new byte[(int)Math.Min(limit, stream.Length - offset)];
        var read = stream.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);
        if (read == 0) return ([], offset);
        var end = Array.LastIndexOf(buffer, (byte)'\n', read - 1);
        // No newline: a line still being written, or one longer than the limit (skipped, or it would block every read).
        if (end < 0) return ([], read == limit ? offset + read : offset);
        var lines = Encoding.UTF8.GetString(buffer, 0, end).Split('\n').Where(l => l.Length > 0).ToList();
        return (lines, offset + end + 1);
    }

    /// <summary>The last <paramref name="count"/> whole lines of the file, and the offset just after them.</summary>
    public static (IReadOnlyList<string> Lines, long Next) Last(string file, int count)
    {
        var lines = new Queue<string>();
        long next = 0;
        while (true)
        {
            var (chunk, after) = Since(file, next, 1024 * 1024);
            if (after == next) break;
            foreach (var line in chunk)
            {
                lines.Enqueue(line);
                if (lines.Count > count) lines.Dequeue();
            }
            next = after;
        }
        return ([.. lines], next);
    }
}
