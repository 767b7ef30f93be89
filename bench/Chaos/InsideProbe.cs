using System.Diagnostics;
using System.Globalization;
using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Bench.Chaos;

/// <summary>
/// Asks one node from inside its own host's network namespace, where the bench's sampler cannot look while the host's
/// link is cut: a bash loop on that host runs psql against the node at the host's address every 100 ms (1 s to connect,
/// 1 s per statement) and writes one line per try to its log: start and end (Unix ms) and `writable`
/// (<c>pg_is_in_recovery()</c> false, the sampler's question), `read-only` or `down` (no answer).
/// </summary>
internal sealed class InsideProbe : IAsyncDisposable
{
    /// <summary>One try: begun at <paramref name="T0"/>, answered (or given up) at <paramref name="T1"/>.</summary>
    public sealed record Answer(DateTime T0, DateTime T1, string Result)
    {
        public bool Writable => Result == "writable";
    }

    private const string Script = """
        while :; do
          t0=$(date +%s%3N)
          r=$("$1" -X -A -t -w -h "$2" -p "$3" -U "$4" -d postgres -c "SELECT CASE WHEN pg_is_in_recovery() THEN 'read-only' ELSE 'writable' END" 2>/dev/null | tr -d '\n')
          t1=$(date +%s%3N)
          echo "$t0 $t1 ${r:-down}"
          sleep 0.1
        done
        """;

    private readonly Process _process;
    private readonly string _log;

    private InsideProbe(string nodeId, Process process, string log)
    {
        NodeId = nodeId;
        _process = process;
        _log = log;
    }

    public string NodeId { get; }

    public static InsideProbe Start(NetnsHosts hosts, int host, NodeSpec node, Credentials superuser, string postgresBin)
    {
        var process = hosts.Start(host, "/bin/bash",
            ["-c", Script, "probe", Path.Combine(postgresBin, "psql"), hosts.HostAddress(host), node.Port.ToString(CultureInfo.InvariantCulture), superuser.Username],
            new Dictionary<string, string>
            {
                ["PGPASSWORD"] = superuser.Password,
                ["PGCONNECT_TIMEOUT"] = "1",
                ["PGOPTIONS"] = "-c statement_timeout=1000",
            });
        return new InsideProbe(node.NodeId, process, hosts.LogPath(process));
    }

    /// <summary>Every try so far, in order.</summary>
    public IReadOnlyList<Answer> Answers()
    {
        var answers = new List<Answer>();
        if (!File.Exists(_log)) return answers; // the shell creates it on starting
        string text;
        using (var stream = new FileStream(_log, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
        using (var reader = new StreamReader(stream))
            text = reader.ReadToEnd();
        foreach (var line in text.Split('\n'))
        {
            var parts = line.Split(' ', 3);
            if (parts.Length == 3 && long.TryParse(parts[0], CultureInfo.InvariantCulture, out var t0) && long.TryParse(parts[1], CultureInfo.InvariantCulture, out var t1) && parts[2].Length > 0)
                answers.Add(new Answer(DateTimeOffset.FromUnixTimeMilliseconds(t0).UtcDateTime, DateTimeOffset.FromUnixTimeMilliseconds(t1).UtcDateTime, parts[2]));
        }
        return answers;
    }

    /// <summary>Waits until a try has found the node writable (the probe works and sees what the sampler saw).</summary>
    public async Task<bool> SeenWritableAsync(TimeSpan limit, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + limit;
        while (DateTime.UtcNow < deadline)
        {
            if (Answers().Any(a => a.Writable)) return true;
            await Task.Delay(100, ct);
        }
        return false;
    }

    /// <summary>Kills the loop and its psql; the namespace's teardown would too, this ends it with the fault.</summary>
    public async ValueTask DisposeAsync()
    {
        try { ProcessTree.Kill(_process); }
        catch (InvalidOperationException) { }
        catch (System.ComponentModel.Win32Exception) { }
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        try { await _process.WaitForExitAsync(limit.Token); }
        catch (OperationCanceledException) { Console.Error.WriteLine($"bench: the inside probe of {NodeId} (pid {_process.Id}) did not exit within 5 s"); }
    }
}
