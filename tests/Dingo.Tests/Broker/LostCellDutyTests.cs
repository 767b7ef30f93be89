using Dingo.Broker;
using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dingo.Tests.Broker;

/// <summary>
/// The lost-cell duty on a real etcd with two brokers (issue 15: one broker declares cells lost, not all): only one holds
/// it at a time; the clock of a missing cell is kept in etcd, so when the holder stops mid-grace the other takes the duty
/// over and declares the cell lost when the first saw it missing plus the grace, not a grace after it took over; a cell
/// that registers again stops its clock.
/// </summary>
public sealed class LostCellDutyTests
{
    private static readonly TimeSpan Grace = TimeSpan.FromSeconds(4);

    private static Dingo.Config.DingoSettings Settings() => TestPlatform.NewSettings(extra: $"dingo.ha.lost-cell-grace = {Grace.TotalSeconds}s");

    [Fact]
    public async Task One_broker_runs_it_and_another_takes_it_over_keeping_the_clock()
    {
        var ct = new CancellationTokenSource(TimeSpan.FromSeconds(60)).Token;
        await using var storeA = TestEtcd.NewStore(out var prefix);
        await using var storeB = new EtcdStore([TestEtcd.ClientUrl], prefix);
        var settings = Settings();
        Assert.Equal(Grace, settings.Ha.LostCellGrace);
        await using var a = new LostCellDuty(storeA, settings, NullLogger.Instance);
        await using var b = new LostCellDuty(storeB, settings, NullLogger.Instance);
        var k = storeA.Keys;

        // Two cells hold nodes; cell-1 is registered, cell-2 is not.
        await storeA.PutAsync(k.Cell("cell-1"), new CellInfo { Id = "cell-1", Zone = "z1", Capacity = 10, Address = "127.0.0.1", Runtime = "process" }, ct);
        await storeA.PutAsync(k.Node("i-1", "n-1"), new NodeSpec { NodeId = "n-1", InstanceId = "i-1", CellId = "cell-1", Port = 15001 }, ct);
        await storeA.PutAsync(k.Node("i-1", "n-2"), new NodeSpec { NodeId = "n-2", InstanceId = "i-1", CellId = "cell-2", Port = 15002 }, ct);

        Assert.True(await a.SweepAsync(ct));
        Assert.False(await b.SweepAsync(ct), "one broker at a time");
        var clock = await storeA.GetAsync<string>(k.MissingCell("cell-2"), ct);
        Assert.NotNull(clock);
        var started = DateTimeOffset.Parse(clock.Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.Null(await storeA.GetAsync<string>(k.MissingCell("cell-1"), ct));

        // The holder stops half-way through the grace: the other takes over at its next sweep.
        await Task.Delay(Grace / 2, ct);
        Assert.True(await a.SweepAsync(ct));
        Assert.Null(await storeA.GetAsync<string>(k.LostCell("cell-2"), ct));
        await a.DisposeAsync();
        Assert.True(await b.SweepAsync(ct), "the duty passes on once its holder gave it up");

        // Lost at the first clock plus the grace: well before a grace counted from the takeover.
        var takenOver = DateTimeOffset.UtcNow;
        while (await storeB.GetAsync<string>(k.LostCell("cell-2"), ct) is null)
        {
            Assert.True(await b.SweepAsync(ct));
            await Task.Delay(200, ct);
        }
        var declared = DateTimeOffset.UtcNow;
        Assert.True(declared - started >= Grace, $"declared {(declared - started).TotalSeconds:0.0}s after the clock started");
        Assert.True(declared - takenOver < Grace * 0.9, $"declared {(declared - takenOver).TotalSeconds:0.0}s after the takeover: the clock started again");
        Assert.Null(await storeB.GetAsync<string>(k.MissingCell("cell-2"), ct));
        Assert.Null(await storeB.GetAsync<string>(k.LostCell("cell-1"), ct));

        // A cell that comes back before its grace stops its clock.
        await storeB.PutAsync(k.Node("i-2", "n-3"), new NodeSpec { NodeId = "n-3", InstanceId = "i-2", CellId = "cell-3", Port = 15003 }, ct);
        Assert.True(await b.SweepAsync(ct));
        Assert.NotNull(await storeB.GetAsync<string>(k.MissingCell("cell-3"), ct));
        await storeB.PutAsync(k.Cell("cell-3"), new CellInfo { Id = "cell-3", Zone = "z3", Capacity = 10, Address = "127.0.0.1", Runtime = "process" }, ct);
        Assert.True(await b.SweepAsync(ct));
        Assert.Null(await storeB.GetAsync<string>(k.MissingCell("cell-3"), ct));
        await storeB.DeletePrefixAsync(prefix + "/", ct);
    }

    [Fact]
    public async Task A_broker_that_dies_holding_it_loses_it_when_its_lease_expires()
    {
        var ct = new CancellationTokenSource(TimeSpan.FromSeconds(60)).Token;
        await using var storeA = TestEtcd.NewStore(out var prefix);
        await using var storeB = new EtcdStore([TestEtcd.ClientUrl], prefix);
        var settings = Settings();
        // Not disposed: a broker killed holding the duty does not give it up.
        var a = new LostCellDuty(storeA, settings, NullLogger.Instance);
        await using var b = new LostCellDuty(storeB, settings, NullLogger.Instance);

        Assert.True(await a.SweepAsync(ct));
        Assert.False(await b.SweepAsync(ct));
        var watch = System.Diagnostics.Stopwatch.StartNew();
        while (!await b.SweepAsync(ct))
        {
            Assert.True(watch.Elapsed < LostCellDuty.Ttl + TimeSpan.FromSeconds(5), "the duty did not pass on after its holder's lease expired");
            await Task.Delay(250, ct);
        }
        Assert.True(watch.Elapsed > LostCellDuty.Ttl - TimeSpan.FromSeconds(1), $"taken over after {watch.Elapsed.TotalSeconds:0.0}s, before the lease could expire");
        Assert.False(await a.SweepAsync(ct), "the broker that lost it (back after a pause) finds it held");
        await storeB.DeletePrefixAsync(prefix + "/", ct);
    }
}
