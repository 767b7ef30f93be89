using System.Collections.Concurrent;

namespace Dingo.Cells;

/// <summary>One asynchronous lock per node id: a runtime changes a node (create, start, stop, remove) one call at a time.</summary>
public sealed class NodeLocks
{
    private readonly ConcurrentDictionary<string, Gate> _gates = new(StringComparer.Ordinal);

    /// <returns>the lock, held until disposed (disposing twice releases once)</returns>
    public async Task<IDisposable> LockAsync(string nodeId, CancellationToken ct)
    {
        var gate = _gates.GetOrAdd(nodeId, _ => new Gate());
        await gate.Semaphore.WaitAsync(ct).ConfigureAwait(false);
        Interlocked.Increment(ref gate.Version);
        return new Releaser(gate);
    }

    /// <summary>
    /// How often the node's lock was taken or given back: odd while it is held. Two equal, even readings mean the runtime
    /// changed nothing of the node in between (every change is made under the lock).
    /// </summary>
    public long Version(string nodeId) => Interlocked.Read(ref _gates.GetOrAdd(nodeId, _ => new Gate()).Version);

    private sealed class Gate
    {
        public readonly SemaphoreSlim Semaphore = new(1, 1);
        public long Version;
    }

    private sealed class Releaser(Gate gate) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) != 0) return;
            Interlocked.Increment(ref gate.Version);
            gate.Semaphore.Release();
        }
    }
}
