using Dingo.Backups;

namespace Dingo.Tests.Support;

/// <summary>A real store that can be taken down, like an unreachable bucket: every call fails while <see cref="Failing"/> is set.</summary>
public sealed class FailingObjectStore(IObjectStore inner) : IObjectStore
{
    public volatile bool Failing;
    private void Check() { if (Failing) throw new IOException("the store is unreachable (test)"); }
    public Task PutAsync(string key, Stream content, CancellationToken cancellationToken = default) { Check(); return inner.PutAsync(key, content, cancellationToken); }
    public Task GetAsync(string key, Stream destination, CancellationToken cancellationToken = default) { Check(); return inner.GetAsync(key, destination, cancellationToken); }
    public Task<bool> ExistsAsync(string key, CancellationToken cancellationToken = default) { Check(); return inner.ExistsAsync(key, cancellationToken); }
    public Task<IReadOnlyList<ObjectInfo>> ListAsync(string prefix, CancellationToken cancellationToken = default) { Check(); return inner.ListAsync(prefix, cancellationToken); }
    public Task DeleteAsync(string key, CancellationToken cancellationToken = default) { Check(); return inner.DeleteAsync(key, cancellationToken); }
    public Task<int> DeletePrefixAsync(string prefix, CancellationToken cancellationToken = default) { Check(); return inner.DeletePrefixAsync(prefix, cancellationToken); }
    public Task<StoreCheck> CheckAsync(CancellationToken cancellationToken = default) => inner.CheckAsync(cancellationToken);
    public string Describe() => "failing " + inner.Describe();
}
