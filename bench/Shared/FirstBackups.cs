using Dingo.Model;
using Dingo.Store;

namespace Dingo.Bench.Shared;

/// <summary>
/// Until every instance's first base backup is in the store (its leader's cell says so in etcd): the platform's start-up
/// work is over only then. A cell takes one base backup at a time, so after a climb of hundreds of instances they come
/// for a while, and an idle figure read before that counts them.
/// </summary>
internal static class FirstBackups
{
    public static async Task WaitAsync(EtcdStore store, IReadOnlyCollection<string> instances, TimeSpan timeout, CancellationToken ct)
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var missing = instances.Count;
        while (watch.Elapsed < timeout)
        {
            var states = await store.ListAsync<BackupState>(store.Keys.Backups, ct).ConfigureAwait(false);
            var done = states.Where(s => s.Value.LastBaseBackup is not null).Select(s => s.Key[store.Keys.Backups.Length..]).ToHashSet();
            missing = instances.Count(i => !done.Contains(i));
            if (missing == 0)
            {
                Console.Error.WriteLine($"bench: every first base backup taken, {watch.Elapsed.TotalSeconds:0} s after the last instance was ready");
                return;
            }
            await Task.Delay(TimeSpan.FromSeconds(2), ct).ConfigureAwait(false);
        }
        throw new TimeoutException($"{missing} of {instances.Count} instances had no base backup {timeout.TotalSeconds:0} s after the climb");
    }
}
