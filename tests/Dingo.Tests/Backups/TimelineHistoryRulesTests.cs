using System.Diagnostics;
using System.Text;
using Dingo.Backups;
using Dingo.Tests.Support;
using Xunit.Abstractions;

namespace Dingo.Tests.Backups;

/// <summary>The check right before pg_promote: bounded by its budget, never blocking, never installing what pg_wal holds.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class TimelineHistoryRulesTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "dingo-tlirules-" + Guid.NewGuid().ToString("N")[..10]);
    private const ulong System = 7000000000000000001;

    public void Dispose()
    {
        if (Directory.Exists(_root)) Directory.Delete(_root, recursive: true);
    }

    [Fact]
    public async Task A_store_that_hangs_costs_the_budget_and_the_promotion_gets_what_was_fetched_before()
    {
        var inner = new LocalFolderObjectStore(_root);
        await inner.PutAsync(ArchiveLayout.History("inst", System, 2), new MemoryStream(Encoding.ASCII.GetBytes("1\t0/3000000\tx\n")));
        var store = new HangingStore(inner);
        var histories = new TimelineHistories(store, "inst", new TestOutputLogger(output));
        await histories.RefreshAsync(System, CancellationToken.None);

        store.Hang = true;
        var node = new TimelineHistories.NodeTimelines(System, 1, new HashSet<uint>());
        var watch = Stopwatch.StartNew();
        var files = await histories.BeforePromotionAsync(node, TimeSpan.FromMilliseconds(300), CancellationToken.None);
        watch.Stop();

        Assert.Equal([2u], files.Select(f => f.Timeline));
        Assert.InRange(watch.Elapsed, TimeSpan.FromMilliseconds(250), TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task A_file_the_node_already_holds_or_a_timeline_not_above_its_own_is_not_installed()
    {
        var store = new LocalFolderObjectStore(_root);
        foreach (var tli in new uint[] { 2, 3, 4 })
            await store.PutAsync(ArchiveLayout.History("inst", System, tli), new MemoryStream(Encoding.ASCII.GetBytes($"{tli - 1}\t0/3000000\tx\n")));
        var histories = new TimelineHistories(store, "inst", new TestOutputLogger(output));

        // Never listed before: the first listing happens now, within the budget.
        var files = await histories.BeforePromotionAsync(new TimelineHistories.NodeTimelines(System, 2, new HashSet<uint> { 3 }), TimeSpan.FromSeconds(5), CancellationToken.None);

        Assert.Equal([4u], files.Select(f => f.Timeline));
    }

    [Fact]
    public async Task A_cancelled_pass_is_not_swallowed()
    {
        var store = new HangingStore(new LocalFolderObjectStore(_root)) { Hang = true };
        var histories = new TimelineHistories(store, "inst", new TestOutputLogger(output));
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(100));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            histories.BeforePromotionAsync(new TimelineHistories.NodeTimelines(System, 1, new HashSet<uint>()), TimeSpan.FromSeconds(30), cts.Token));
    }

    /// <summary>A store whose reads hang until cancelled once <see cref="Hang"/> is set.</summary>
    private sealed class HangingStore(IObjectStore inner) : IObjectStore
    {
        public volatile bool Hang;

        private async Task WaitAsync(CancellationToken ct)
        {
            if (Hang) await Task.Delay(Timeout.Infinite, ct).ConfigureAwait(false);
        }

        public async Task PutAsync(string key, Stream content, CancellationToken cancellationToken = default)
        {
            await WaitAsync(cancellationToken).ConfigureAwait(false);
            await inner.PutAsync(key, content, cancellationToken).ConfigureAwait(false);
        }

        public async Task GetAsync(string key, Stream destination, CancellationToken cancellationToken = default)
        {
            await WaitAsync(cancellationToken).ConfigureAwait(false);
            await inner.GetAsync(key, destination, cancellationToken).ConfigureAwait(false);
        }

        public async Task<bool> ExistsAsync(string key, CancellationToken cancellationToken = default)
        {
            await WaitAsync(cancellationToken).ConfigureAwait(false);
            return await inner.ExistsAsync(key, cancellationToken).ConfigureAwait(false);
        }

        public async Task<IReadOnlyList<ObjectInfo>> ListAsync(string prefix, CancellationToken cancellationToken = default)
        {
            await WaitAsync(cancellationToken).ConfigureAwait(false);
            return await inner.ListAsync(prefix, cancellationToken).ConfigureAwait(false);
        }

        public async Task DeleteAsync(string key, CancellationToken cancellationToken = default)
        {
            await WaitAsync(cancellationToken).ConfigureAwait(false);
            await inner.DeleteAsync(key, cancellationToken).ConfigureAwait(false);
        }

        public async Task<int> DeletePrefixAsync(string prefix, CancellationToken cancellationToken = default)
        {
            await WaitAsync(cancellationToken).ConfigureAwait(false);
            return await inner.DeletePrefixAsync(prefix, cancellationToken).ConfigureAwait(false);
        }

        public Task<StoreCheck> CheckAsync(CancellationToken cancellationToken = default) => inner.CheckAsync(cancellationToken);

        public string Describe() => "hanging " + inner.Describe();
    }
}
