using System.Diagnostics;
using Dingo.Config;
using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Etcd;

/// <summary>
/// Instances' events in a real etcd: written in the background in order, under a lease, capped per instance; recording
/// never waits for etcd, and what was recorded while etcd was away reaches it once it is back. The `dingo events`
/// command reads them.
/// </summary>
[SuiteCost(12)]
public sealed class EventJournalTests
{
    private static readonly EventSettings Settings = new() { Retention = TimeSpan.FromHours(2), PerInstance = 10 };

    [Fact]
    public async Task Events_are_listed_oldest_first_under_a_lease_and_the_cli_prints_them()
    {
        await using var store = TestEtcd.NewStore(out var prefix);
        await using (var log = new EventJournal(store, Settings, "cell-1", NullLogger.Instance))
        {
            log.Record("i-ev", "n-1", "take_leadership", "taking the leader key: it is free");
            log.Record("i-ev", "n-1", "promote", "promoting: I hold the leader key");
            log.Record("i-other", null, EventKind.Operation(OperationKind.Provision, OperationState.Succeeded), "ready");
            await log.FlushAndStopAsync(TimeSpan.FromSeconds(10));
            Assert.Equal(0, log.Dropped);
        }
        var events = await EventJournal.ReadAsync(store, "i-ev", CancellationToken.None);
        Assert.Equal(new[] { "take_leadership", "promote" }, events.Select(e => e.Kind));
        Assert.All(events, e => Assert.Equal("n-1", e.NodeId));
        Assert.All(events, e => Assert.Equal("cell-1", e.Source));
        Assert.True(events[0].At <= events[1].At);
        var raw = await store.ListRawAsync(store.Keys.Events("i-ev"), CancellationToken.None);
        Assert.All(raw, r => Assert.NotEqual(0, r.Lease));
        Assert.Equal("provision_succeeded", Assert.Single(await EventJournal.ReadAsync(store, "i-other", CancellationToken.None)).Kind);

        // The console prints them, and says so when an instance has neither a record nor events.
        var settings = TestPlatform.NewSettings() with { EtcdEndpoints = [TestEtcd.ClientUrl], EtcdPrefix = prefix };
        var output = new StringWriter();
        Assert.Equal(0, await Dingo.Cli.EventsCommand.RunAsync(["i-ev"], settings, output, CancellationToken.None));
        var lines = output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.StartsWith("TIME (UTC)", lines[0], StringComparison.Ordinal);
        Assert.Contains("take_leadership", lines[1], StringComparison.Ordinal);
        Assert.Contains("promoting: I hold the leader key", lines[2], StringComparison.Ordinal);
        Assert.Equal(1, await Dingo.Cli.EventsCommand.RunAsync(["i-none"], settings, new StringWriter(), CancellationToken.None));
        Assert.Equal(2, await Dingo.Cli.EventsCommand.RunAsync(["../x"], settings, new StringWriter(), CancellationToken.None));
        var json = new StringWriter();
        Assert.Equal(0, await Dingo.Cli.EventsCommand.RunAsync(["i-ev", "--json", "--limit", "1"], settings, json, CancellationToken.None));
        Assert.Contains("\"kind\":\"promote\"", json.ToString(), StringComparison.Ordinal);
        Assert.DoesNotContain("take_leadership", json.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Each_instance_keeps_at_most_its_cap_the_newest_ones()
    {
        await using var store = TestEtcd.NewStore(out _);
        await using (var log = new EventJournal(store, Settings, "cell-1", NullLogger.Instance))
        {
            for (var i = 0; i < 60; i++) log.Record("i-cap", "n-1", "rewind", $"event {i:D2}");
            await log.FlushAndStopAsync(TimeSpan.FromSeconds(20));
        }
        var events = await EventJournal.ReadAsync(store, "i-cap", CancellationToken.None);
        // Trimmed every 25 writes: after 60, the 10 kept at the 50th write plus the 10 since.
        Assert.InRange(events.Count, Settings.PerInstance, Settings.PerInstance + 24);
        Assert.Equal("event 59", events[^1].Sentence);
        Assert.Equal(events.Select(e => e.Sentence).Order(StringComparer.Ordinal), events.Select(e => e.Sentence));
        Assert.DoesNotContain(events, e => e.Sentence == "event 00");
    }

    [Fact]
    public async Task Recording_while_etcd_is_away_returns_at_once_and_the_events_arrive_once_it_is_back()
    {
        await using var etcd = await TestEtcdCluster.StartAsync(members: 1);
        await using var store = new EtcdStore(etcd.ClientUrls, $"/t-{Guid.NewGuid():N}");
        await using var log = new EventJournal(store, Settings, "cell-1", NullLogger.Instance);
        log.Record("i-away", "n-1", "take_leadership", "before");
        await Eventually.UntilAsync(async () => (await EventJournal.ReadAsync(store, "i-away", CancellationToken.None)).Count == 1, TimeSpan.FromSeconds(10), "the first event written");

        etcd.Kill(0);
        var watch = Stopwatch.StartNew();
        for (var i = 0; i < 5; i++) log.Record("i-away", "n-1", "demote", $"away {i}");
        Assert.True(watch.Elapsed < TimeSpan.FromMilliseconds(200), $"recording waited {watch.Elapsed.TotalMilliseconds:0} ms for an absent etcd");
        await Task.Delay(TimeSpan.FromSeconds(3)); // the writer meets the absent etcd and retries

        etcd.Start(0);
        await Eventually.UntilAsync(async () =>
        {
            try { return (await EventJournal.ReadAsync(store, "i-away", CancellationToken.None)).Count == 6; }
            catch (Grpc.Core.RpcException) { return false; }
        }, TimeSpan.FromSeconds(30), "the events recorded while etcd was away");
        var events = await EventJournal.ReadAsync(store, "i-away", CancellationToken.None);
        Assert.Equal(new[] { "before", "away 0", "away 1", "away 2", "away 3", "away 4" }, events.Select(e => e.Sentence));
        Assert.Equal(0, log.Dropped);
    }
}
