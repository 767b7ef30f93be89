using System.Collections.Concurrent;

namespace Dingo.Cells;

/// <summary>One asynchronous lock per node id: a runtime changes a node (create, start, stop, remove) one call at a time.</summary>
public sealed class NodeLocks
{
    private readonly ConcurrentDictionary<string, SemaphoreSlim> _gates = new(StringComparer.Ordinal);

    /// <returns>the lock, held until disposed (disposing twice releases once)</returns>
    public async Task<IDisposable> LockAsync(string nodeId, CancellationToken ct)
    {
        var gate = _gates.GetOrAdd(nodeId, _ => new SemaphoreSlim(1, 1));
        await gate.WaitAsync(ct).ConfigureAwait(false);
        return new Releaser(gate);
    }

    private sealed class Releaser(SemaphoreSlim gate) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0) gate.Release();
        }
    }
}
