using System.Diagnostics;
using System.Text.RegularExpressions;
using Dingo.Cli;
using Dingo.Store;
using Dingo.Tests.Support;

namespace Dingo.Tests.Etcd;

/// <summary>
/// The platform's etcd compacts its history (<see cref="Platform.EtcdHistoryArgs"/>): without it the database grows with
/// every write until etcd's quota, and then refuses writes. Dingo must go on reading, swapping and watching across it.
/// </summary>
public sealed partial class EtcdHistoryTests
{
    [Fact]
    [Trait(Tier.Name, Tier.Fast)]
    public void Every_etcd_the_platform_ships_keeps_the_same_five_minutes_of_history()
    {
        var flags = string.Join(' ', Platform.EtcdHistoryArgs());
        Assert.Equal("--auto-compaction-mode periodic --auto-compaction-retention 5m", flags);
        var repo = TestPlatform.RepoRoot();
        foreach (var file in new[] { "deploy/three-hosts.sh", "deploy/systemd/dingo-etcd.service" })
        {
            // One command line, continuation lines joined.
            var text = Spaces().Replace(File.ReadAllText(Path.Combine(repo, file)).Replace("\\\n", " ", StringComparison.Ordinal), " ");
            Assert.True(text.Contains(flags, StringComparison.Ordinal), $"{file} starts etcd without `{flags}`");
        }
    }

    [Fact]
    public async Task A_compacting_etcd_refuses_old_revisions_while_the_store_reads_swaps_and_watches_on()
    {
        var data = Directory.CreateTempSubdirectory("dingo-etcd-history-");
        var (client, peer) = (FreePorts.One(), FreePorts.One());
        var url = $"http://127.0.0.1:{client}";
        // The platform's flags with a retention a test can wait for.
        var (file, args) = EtcdForTests.Command(
        [
            "--name", "h", "--data-dir", Path.Combine(data.FullName, "etcd"),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", $"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", $"http://127.0.0.1:{peer}",
            "--initial-cluster", $"h=http://127.0.0.1:{peer}", "--log-level", "error",
            .. Platform.EtcdHistoryArgs("2s"),
        ]);
        var etcd = RunProcesses.Start(file, args, data.FullName);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var ct = cts.Token;
        try
        {
            await using var store = new EtcdStore([url], "/h");
            await Eventually.UntilAsync(async () =>
            {
                try { await store.GetStringAsync("/h/probe", ct); return true; }
                catch (Grpc.Core.RpcException) { return false; }
            }, TimeSpan.FromSeconds(20), "etcd serving");

            await store.PutStringAsync("/h/swap", "first", ct);
            var before = (await store.GetRawAsync("/h/swap", ct))!;
            var seen = new List<string?>();
            using var stopWatch = CancellationTokenSource.CreateLinkedTokenSource(ct);
            var watching = store.WatchPrefixAsync("/h/k", changes =>
            {
                lock (seen) seen.AddRange(changes.Select(c => c.Value));
                return Task.CompletedTask;
            }, stopWatch.Token);
            for (var i = 1; i <= 20; i++) await store.PutStringAsync("/h/k", $"v{i}", ct);

            var answer = "";
            await Eventually.UntilAsync(async () =>
            {
                answer = await EtcdctlAsync(url, "get", "/h/swap", $"--rev={before.ModRevision}");
                return answer.Contains("required revision has been compacted", StringComparison.Ordinal);
            }, TimeSpan.FromSeconds(30), () => $"the revision of the first write compacted away; etcdctl said: {answer}");

            // A swap against a revision read before the compaction still holds while the key is unchanged.
            Assert.True(await store.CompareAndPutAsync("/h/swap", "second", before.ModRevision, ct));
            Assert.Equal("\"second\"", await store.GetStringAsync("/h/swap", ct));
            await store.PutStringAsync("/h/k", "after", ct);
            Assert.Equal("after", await store.GetStringAsync("/h/k", ct));
            await Eventually.UntilAsync(() => { lock (seen) return Task.FromResult(seen.Contains("after")); }, TimeSpan.FromSeconds(10),
                () => { lock (seen) return $"the watch begun before the compaction seeing the write after it; it saw {seen.Count}: {string.Join(",", seen)}"; });
            await stopWatch.CancelAsync();
            await watching;
        }
        finally
        {
            try { etcd.Kill(); await etcd.WaitForExitAsync(CancellationToken.None); } catch (InvalidOperationException) { }
            etcd.Dispose();
            try { data.Delete(recursive: true); } catch (DirectoryNotFoundException) { }
        }
    }

    private static async Task<string> EtcdctlAsync(string url, params string[] args)
    {
        var psi = new ProcessStartInfo("/usr/bin/etcdctl");
        foreach (var a in new[] { "--endpoints", url }.Concat(args)) psi.ArgumentList.Add(a);
        psi.Environment["ETCDCTL_API"] = "3";
        var result = await ProcessRunner.RunAsync(psi, null, TimeSpan.FromSeconds(10), CancellationToken.None);
        return result.StdOut + result.StdErr;
    }

    [GeneratedRegex(@"\s+")]
    private static partial Regex Spaces();
}
