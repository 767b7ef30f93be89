using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Dingo.Backups;
using Dingo.Bench.Shared;
using Dingo.Cells;

namespace Dingo.Bench.Archive;

/// <summary>
/// PostgreSQL's own pg_receivewal, with its defaults (no compression, each segment fsynced when complete; optionally
/// --no-sync), into a local folder from a physical slot of its own (created reserving WAL at once). The password
/// comes from a passfile (mode 0600) in the bench's folder.
/// </summary>
internal sealed partial class ReceiveWal
{
    public const string Slot = "bench_receivewal";
    private static readonly string Bin = Path.Combine(BenchNodes.PgBin, "pg_receivewal");
    private readonly NodeLaunchSpec _node;
    private readonly Dictionary<string, string> _environment;

    private readonly bool _noSync;

    private ReceiveWal(NodeLaunchSpec node, string dir, string passfile, bool noSync)
    {
        _node = node;
        _noSync = noSync;
        Dir = dir;
        _environment = new Dictionary<string, string> { ["PGPASSFILE"] = passfile, ["PGCONNECT_TIMEOUT"] = "10" };
    }

    /// <summary>Where the segments go.</summary>
    public string Dir { get; }

    public static async Task<ReceiveWal> CreateAsync(NodeLaunchSpec node, string root, bool noSync, CancellationToken ct)
    {
        var dir = Path.Combine(root, "pg_receivewal");
        Directory.CreateDirectory(dir);
        var passfile = Path.Combine(root, "pgpass");
        await File.WriteAllTextAsync(passfile, "", ct);
        File.SetUnixFileMode(passfile, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        await File.WriteAllTextAsync(passfile, $"{node.ListenAddress}:{node.Port}:*:{node.Superuser.Username}:{node.Superuser.Password}\n", ct);
        // Not `pg_receivewal --create-slot`: its slot reserves no WAL until first used, and pg_receivewal would then
        // start at the server's current position rather than where the archive left off.
        await Sql.ExecAsync(node, $"SELECT pg_create_physical_replication_slot('{Slot}', true)", ct);
        return new ReceiveWal(node, dir, passfile, noSync);
    }

    private string[] Connection() =>
        ["-h", _node.ListenAddress, "-p", _node.Port.ToString(CultureInfo.InvariantCulture), "-U", _node.Superuser.Username, "--no-password"];

    /// <summary>
    /// Streams from where the folder (or, when it holds no complete segment, the slot) leaves off until
    /// <paramref name="end"/>, a segment boundary, is received and that segment closed. Returns the wall time from
    /// the start of the process to its exit and the position it started streaming at (from its verbose output).
    /// </summary>
    public async Task<(TimeSpan Elapsed, ulong From)> CatchUpAsync(ulong end, CancellationToken ct)
    {
        // pg_receivewal stops once it has received past --endpos, checked again when a segment completes: one byte
        // short of the boundary makes it stop right after closing the segment that ends there.
        var watch = Stopwatch.StartNew();
        var output = await ChildProcesses.RunCheckedAsync(Bin,
            [.. Connection(), "--directory", Dir, "--slot", Slot, "--no-loop", "--verbose", "--endpos", Lsn.Format(end - 1), .. (string[])(_noSync ? ["--no-sync"] : [])],
            _environment, TimeSpan.FromMinutes(30), ct);
        var elapsed = watch.Elapsed;
        var started = StartedAt().Match(output);
        if (!started.Success) throw new InvalidOperationException($"pg_receivewal did not say where it started: {ChildProcesses.Tail(output)}");
        return (elapsed, Lsn.Parse(started.Groups[1].Value));
    }

    [GeneratedRegex(@"starting log streaming at ([0-9A-F]+/[0-9A-F]+)")]
    private static partial Regex StartedAt();
}
