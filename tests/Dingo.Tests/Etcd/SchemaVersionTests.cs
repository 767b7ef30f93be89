using System.Diagnostics;
using Dingo.Model;
using Dingo.Store;
using Dingo.Tests.Support;
using Xunit.Abstractions;

namespace Dingo.Tests.Etcd;

/// <summary>
/// The schema version in etcd, on a real etcd: a process that writes first records this build's layout, and one that
/// finds a newer layout (an upgrade it predates) writes nothing and, as a broker or cell, stops with exit code 78.
/// </summary>
public sealed class SchemaVersionTests(ITestOutputHelper output)
{
    private static (EtcdStore Plain, EtcdStore Checked, List<SchemaVersionException> Refusals) Stores()
    {
        var plain = TestEtcd.NewStore(out var prefix);
        var checkedStore = new EtcdStore([TestEtcd.ClientUrl], prefix);
        var refusals = new List<SchemaVersionException>();
        checkedStore.CheckSchemaBeforeWrites("test writer", ex => { lock (refusals) refusals.Add(ex); });
        return (plain, checkedStore, refusals);
    }

    [Fact]
    public async Task The_first_write_records_this_builds_schema_and_writes_go_on()
    {
        var (plain, store, refusals) = Stores();
        await using var _ = plain;
        await using var __ = store;
        Assert.Null(await plain.GetRawAsync(plain.Keys.Schema, CancellationToken.None));

        await store.PutStringAsync(store.Keys.Root + "/a", "1", CancellationToken.None);
        var schema = await plain.GetAsync<SchemaRecord>(plain.Keys.Schema, CancellationToken.None);
        Assert.NotNull(schema);
        Assert.Equal(SchemaVersion.Current, schema.Value.Version);
        Assert.Equal(Product.Version, schema.Value.WrittenBy);
        Assert.True(await store.CreateIfAbsentAsync(store.Keys.Root + "/b", "2", CancellationToken.None));
        Assert.True(await store.DeleteAsync(store.Keys.Root + "/a", CancellationToken.None));
        // Written once: later writes leave it as it was.
        Assert.Equal(schema.ModRevision, (await plain.GetAsync<SchemaRecord>(plain.Keys.Schema, CancellationToken.None))!.ModRevision);
        Assert.Empty(refusals);
    }

    [Fact]
    public async Task Records_of_a_newer_schema_stop_every_write_naming_both_versions()
    {
        var (plain, store, refusals) = Stores();
        await using var _ = plain;
        await using var __ = store;
        var newer = SchemaVersion.Current + 1;
        await plain.PutStringAsync(plain.Keys.Schema, $$"""{"version":{{newer}},"writtenBy":"9.1.0","at":"2027-01-01T00:00:00Z"}""", CancellationToken.None);
        var key = store.Keys.Root + "/a";

        var ex = await Assert.ThrowsAsync<SchemaVersionException>(() => store.PutStringAsync(key, "1", CancellationToken.None));
        output.WriteLine(ex.Message);
        Assert.Contains($"schema {newer} (written by Dingo 9.1.0)", ex.Message);
        Assert.Contains($"this test writer (Dingo {Product.Version}) knows schema {SchemaVersion.Current} at most", ex.Message);
        await Assert.ThrowsAsync<SchemaVersionException>(() => store.CreateIfAbsentAsync(key, "1", CancellationToken.None));
        await Assert.ThrowsAsync<SchemaVersionException>(() => store.DeletePrefixAsync(store.Keys.Root + "/", CancellationToken.None));
        await Assert.ThrowsAsync<SchemaVersionException>(() => store.TransactAsync(new Txn().PutString(key, "1"), CancellationToken.None));
        Assert.Null(await plain.GetRawAsync(key, CancellationToken.None));
        Assert.Contains("9.1.0", (await plain.GetRawAsync(plain.Keys.Schema, CancellationToken.None))!.Value);
        // Reads go on (a refused process still says what it sees); the process is told once.
        Assert.NotNull(await store.GetRawAsync(store.Keys.Schema, CancellationToken.None));
        Assert.Single(refusals);
    }

    [Theory]
    [InlineData("not json")]
    [InlineData("{\"writtenBy\":\"0.9.0\"}")]
    [InlineData("\"1\"")]
    public async Task An_unreadable_schema_value_is_refused_and_left_as_it_is(string value)
    {
        var (plain, store, refusals) = Stores();
        await using var _ = plain;
        await using var __ = store;
        await plain.PutStringAsync(plain.Keys.Schema, value, CancellationToken.None);
        var ex = await Assert.ThrowsAsync<SchemaVersionException>(() => store.PutStringAsync(store.Keys.Root + "/a", "1", CancellationToken.None));
        Assert.Contains("holds no schema version", ex.Message);
        Assert.Equal(value, (await plain.GetRawAsync(plain.Keys.Schema, CancellationToken.None))!.Value);
        Assert.Single(refusals);
    }

    [Fact]
    public async Task With_etcd_unreachable_a_write_fails_with_etcds_error_and_the_check_waits_for_the_next_write()
    {
        await using var store = new EtcdStore([$"http://127.0.0.1:{FreePorts.One()}"], "/t-" + Guid.NewGuid().ToString("N"));
        var refused = 0;
        store.CheckSchemaBeforeWrites("test writer", _ => refused++);
        await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => store.PutStringAsync(store.Keys.Root + "/a", "1", CancellationToken.None));
        await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => store.PutStringAsync(store.Keys.Root + "/a", "1", CancellationToken.None));
        Assert.Equal(0, refused);
    }

    [Theory]
    [InlineData("Dingo.Broker.dll")]
    [InlineData("Dingo.Cell.dll")]
    public async Task A_broker_or_cell_older_than_the_records_stops_with_exit_code_78_saying_why(string program)
    {
        var settings = TestPlatform.NewSettings();
        await using (var plain = new EtcdStore(settings.EtcdEndpoints, settings.EtcdPrefix))
            await plain.PutStringAsync(plain.Keys.Schema, $$"""{"version":{{SchemaVersion.Current + 1}},"writtenBy":"9.1.0","at":"2027-01-01T00:00:00Z"}""", CancellationToken.None);
        var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, program), "--config", Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf"),
                     "--config", Path.Combine(settings.DataDir, "test.conf") })
            psi.ArgumentList.Add(a);
        psi.Environment["DINGO_AKKA_PORT"] = FreePorts.One().ToString(System.Globalization.CultureInfo.InvariantCulture);
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(90));
            try { await process.WaitForExitAsync(timeout.Token); }
            catch (OperationCanceledException)
            {
                throw new Xunit.Sdk.XunitException($"{program} was still running 90 s after meeting a newer schema");
            }
            var text = await stdout + await stderr;
            output.WriteLine(text);
            Assert.Equal(SchemaVersion.RefusedExitCode, process.ExitCode);
            Assert.Contains($"knows schema {SchemaVersion.Current} at most: upgrade it", text);
            // It wrote nothing: etcd holds the schema key alone.
            await using var check = new EtcdStore(settings.EtcdEndpoints, settings.EtcdPrefix);
            var keys = (await check.ListRawAsync(settings.EtcdPrefix + "/", CancellationToken.None)).Select(k => k.Key).ToList();
            Assert.Equal([check.Keys.Schema], keys);
        }
        finally
        {
            if (!process.HasExited) ProcessTree.Kill(process);
            await using var cleanup = new EtcdStore(settings.EtcdEndpoints, settings.EtcdPrefix);
            await cleanup.DeletePrefixAsync(settings.EtcdPrefix + "/", CancellationToken.None);
        }
    }
}
