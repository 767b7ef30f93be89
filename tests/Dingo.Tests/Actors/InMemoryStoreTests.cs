using Dingo.Store;
using Dingo.Tests.Support;
using Etcdserverpb;
using Google.Protobuf;

namespace Dingo.Tests.Actors;

/// <summary>
/// What an instance's pass relies on etcd to do with compares, revisions, prefixes and leases, as one table of cases.
/// <see cref="InMemoryStoreTests"/> runs it against the in-memory store the actor tests use, and
/// <see cref="EtcdStoreContractTests"/> against the real etcd: a case the fake got wrong fails on one side only.
/// </summary>
public abstract class StoreContract
{
    private static readonly CancellationToken None = CancellationToken.None;

    private protected abstract IInstanceStore Store { get; }

    private string K(string name) => $"{Store.Keys.Root}/contract/{name}";

    public enum KeyState { Never, Present, Deleted }
    public enum Guard { Absent, AtCurrent, AtPrevious, AtZero }

    /// <summary>
    /// Present: put twice (the first revision is the previous one); deleted: then deleted, so absent again. A compare that
    /// fails writes nothing and leaves the compared key as it was.
    /// </summary>
    [Theory]
    [InlineData(KeyState.Never, Guard.Absent, true)]
    [InlineData(KeyState.Never, Guard.AtZero, true)]
    [InlineData(KeyState.Present, Guard.Absent, false)]
    [InlineData(KeyState.Present, Guard.AtCurrent, true)]
    [InlineData(KeyState.Present, Guard.AtPrevious, false)]
    [InlineData(KeyState.Present, Guard.AtZero, false)]
    [InlineData(KeyState.Deleted, Guard.Absent, true)]
    [InlineData(KeyState.Deleted, Guard.AtCurrent, false)]
    [InlineData(KeyState.Deleted, Guard.AtZero, true)]
    public async Task A_compare_holds_as_etcd_judges_it(KeyState state, Guard guard, bool applies)
    {
        var key = K("guarded");
        var marker = K("marker");
        long previous = 0, current = 0;
        if (state != KeyState.Never)
        {
            await Store.PutAsync(key, "v1", None);
            previous = (await Store.GetAsync<string>(key, None))!.ModRevision;
            await Store.PutAsync(key, "v2", None);
            current = (await Store.GetAsync<string>(key, None))!.ModRevision;
            Assert.True(current > previous);
        }
        if (state == KeyState.Deleted) Assert.True(await Store.TransactAsync(new Txn().Delete(key), None));
        var txn = guard switch
        {
            Guard.Absent => new Txn().Absent(key),
            Guard.AtCurrent => new Txn().At(key, current),
            Guard.AtPrevious => new Txn().At(key, previous),
            _ => new Txn().At(key, 0),
        };

        Assert.Equal(applies, await Store.TransactAsync(txn.Put(marker, "m"), None));
        Assert.Equal(applies ? "m" : null, (await Store.GetAsync<string>(marker, None))?.Value);
        Assert.Equal(state == KeyState.Present ? "v2" : null, (await Store.GetAsync<string>(key, None))?.Value);
    }

    [Fact]
    public async Task A_transaction_writes_all_its_keys_at_one_new_revision_or_nothing()
    {
        await Store.PutAsync(K("b"), "old", None);
        await Store.PutAsync(K("c"), "doomed", None);
        var before = (await Store.GetAsync<string>(K("b"), None))!.ModRevision;

        Assert.True(await Store.TransactAsync(new Txn().Absent(K("a")).Put(K("a"), "new").Put(K("b"), "newer").Delete(K("c")), None));
        var a = (await Store.GetAsync<string>(K("a"), None))!;
        var b = (await Store.GetAsync<string>(K("b"), None))!;
        Assert.Equal(("new", "newer"), (a.Value, b.Value));
        Assert.Equal(a.ModRevision, b.ModRevision);
        Assert.True(a.ModRevision > before);
        Assert.Null(await Store.GetStringAsync(K("c"), None));

        // The same again fails on its compare: nothing of it is written.
        Assert.False(await Store.TransactAsync(new Txn().Absent(K("a")).Put(K("a"), "again").Put(K("c"), "back"), None));
        Assert.Equal(("new", a.ModRevision), ((await Store.GetAsync<string>(K("a"), None))!.Value, (await Store.GetAsync<string>(K("a"), None))!.ModRevision));
        Assert.Null(await Store.GetStringAsync(K("c"), None));
    }

    [Fact]
    public async Task A_prefix_delete_takes_the_keys_under_it_and_a_list_is_in_key_order()
    {
        foreach (var name in new[] { "q/x", "p/y/z", "p0", "p/x", "p" }) await Store.PutAsync(K(name), name, None);
        Assert.Equal(["p", "p/x", "p/y/z", "p0", "q/x"], (await Store.ListAsync<string>(K(""), None)).Select(v => v.Value));

        Assert.True(await Store.TransactAsync(new Txn().DeletePrefix(K("p/")), None));

        Assert.Equal(["p", "p0", "q/x"], (await Store.ListAsync<string>(K(""), None)).Select(v => v.Value));
    }

    [Fact]
    public async Task Prefixes_and_keys_read_together_come_back_in_order_and_a_key_is_never_read_as_a_prefix()
    {
        foreach (var name in new[] { "n/a1/x", "n/a1/y", "n/a10/z", "s/a1", "s/a10", "t" }) await Store.PutAsync(K(name), name, None);
        var written = (await Store.GetAsync<string>(K("t"), None))!.ModRevision;

        var read = await Store.ReadManyRawAsync([K("n/a1/"), K("empty/")], [K("s/a1"), K("s/a"), K("t")], None);

        Assert.Equal(2, read.Prefixes.Count);
        Assert.Equal(["\"n/a1/x\"", "\"n/a1/y\""], read.Prefixes[0].Select(v => v.Value));
        Assert.Empty(read.Prefixes[1]);
        Assert.Equal(K("n/a1/x"), read.Prefixes[0][0].Key);
        Assert.Equal("\"s/a1\"", read.Keys[0]!.Value);
        Assert.Null(read.Keys[1]); // "s/a" names no key, though keys start with it
        Assert.Equal(written, read.Keys[2]!.ModRevision);
        Assert.Equal("t", EtcdStore.Decode<string>(read.Keys[2]!).Value);
    }

    [Fact]
    public async Task A_key_put_under_a_lease_names_it_and_a_lease_never_granted_is_refused()
    {
        var lease = await Store.GrantLeaseAsync(TimeSpan.FromMinutes(5), None);
        Assert.NotEqual(0, lease);
        await Store.PutAsync(K("leased"), "x", None, lease);
        Assert.True(await Store.TransactAsync(new Txn().Put(K("leased-txn"), "y", lease), None));
        Assert.Equal((lease, lease), ((await Store.GetAsync<string>(K("leased"), None))!.Lease, (await Store.GetAsync<string>(K("leased-txn"), None))!.Lease));

        await Assert.ThrowsAnyAsync<Exception>(() => Store.PutAsync(K("orphan"), "z", None, lease + 1_000_003));
        Assert.Null(await Store.GetStringAsync(K("orphan"), None));
    }

    [Fact]
    public async Task Requests_etcd_refuses_write_nothing()
    {
        await Assert.ThrowsAnyAsync<Exception>(() => Store.TransactAsync(new Txn().Put(K("twice"), 1).Put(K("twice"), 2), None));
        await Assert.ThrowsAnyAsync<Exception>(() => Store.TransactAsync(new Txn().Put(K("d/put"), 1).DeletePrefix(K("d/")), None));
        var tooMany = new Txn();
        for (var i = 0; i <= 128; i++) tooMany.Put(K($"many/{i:000}"), i);
        await Assert.ThrowsAnyAsync<Exception>(() => Store.TransactAsync(tooMany, None));
        Assert.Empty(await Store.ListAsync<int>(K(""), None));

        // 128 operations are allowed.
        var enough = new Txn();
        for (var i = 0; i < 128; i++) enough.Put(K($"many/{i:000}"), i);
        Assert.True(await Store.TransactAsync(enough, None));
        Assert.Equal(128, (await Store.ListAsync<int>(K("many/"), None)).Count);
    }
}

/// <summary>The table against the in-memory store, and what only it can show: the revision itself, and a failure branch.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class InMemoryStoreTests : StoreContract
{
    private readonly InMemoryStore _store = new();
    private protected override IInstanceStore Store => _store;

    [Fact]
    public void Only_a_write_moves_the_revision_by_one()
    {
        var k = _store.Keys;
        var start = _store.Revision;
        _store.Put(k.Cell("a"), "x");
        Assert.Equal(start + 1, _store.Revision);
        Assert.Equal(_store.Revision, _store.Read<string>(k.Cell("a"))!.ModRevision);

        // A failed compare, and a delete of nothing, change nothing: no new revision.
        Assert.False(_store.Apply(new Txn().Absent(k.Cell("a")).Put(k.Cell("b"), "y").Build()));
        Assert.True(_store.Apply(new Txn().Delete(k.Cell("none")).DeletePrefix(k.Cells + "zz/").Build()));
        Assert.Equal(start + 1, _store.Revision);
    }

    [Fact]
    public void A_failed_compare_applies_the_failure_branch()
    {
        var k = _store.Keys;
        _store.Put(k.Cell("a"), "x");
        var request = new Txn().Absent(k.Cell("a")).Put(k.Cell("b"), "success").Build();
        request.Failure.Add(new RequestOp { RequestPut = new PutRequest { Key = ByteString.CopyFromUtf8(k.Cell("c")), Value = ByteString.CopyFromUtf8("\"failure\"") } });

        Assert.False(_store.Apply(request));
        Assert.Null(_store.Read<string>(k.Cell("b")));
        Assert.Equal("failure", _store.Read<string>(k.Cell("c"))!.Value);
    }
}

/// <summary>The same table against the run's real etcd: what the in-memory store must agree with.</summary>
public sealed class EtcdStoreContractTests : StoreContract, IAsyncLifetime
{
    private readonly EtcdStore _store = TestEtcd.NewStore(out _);
    private protected override IInstanceStore Store => _store;

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        await _store.DeletePrefixAsync(_store.Keys.Root + "/", CancellationToken.None);
        await _store.DisposeAsync();
    }
}
