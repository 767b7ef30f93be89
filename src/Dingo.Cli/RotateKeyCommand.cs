using Dingo.Backups;
using Dingo.Config;
using Dingo.Security;
using Dingo.Store;

namespace Dingo.Cli;

/// <summary>
/// `dingo rotate-key [--new-key]`: re-seals every password in etcd and in the cluster-data backup with the current
/// seal key. --new-key first puts a new key at the top of the key file (the old ones stay, so everything still opens).
/// Run it again after every process has the new key: when it finds nothing sealed with an old key, that key may go.
/// </summary>
public static class RotateKeyCommand
{
    public static async Task<int> RunAsync(IReadOnlyList<string> args, DingoSettings settings, TextWriter output, CancellationToken ct)
    {
        var newKey = false;
        foreach (var a in args)
        {
            if (a == "--new-key") newKey = true;
            else
            {
                await Console.Error.WriteLineAsync($"dingo rotate-key: unknown argument '{a}'. Usage: dingo rotate-key [--new-key]");
                return 2;
            }
        }
        if (!Sealing.Configured)
        {
            await Console.Error.WriteLineAsync($"dingo rotate-key: no seal key: {SealSettings.HowToSet}");
            return 2;
        }
        if (newKey)
        {
            if (settings.Seal.InlineKeys.Length > 0 || settings.Seal.KeyFile.Length == 0)
            {
                await Console.Error.WriteLineAsync($"dingo rotate-key: --new-key adds a key to a key file, and the keys come from {SealSettings.KeysVariable}: put a new key first there (head -c 32 /dev/urandom | base64), restart the processes with it, then run dingo rotate-key");
                return 2;
            }
            var id = await SealKeyFile.AddCurrentKeyAsync(settings.Seal.KeyFile, ct);
            await output.WriteLineAsync($"new seal key {id} is first in {settings.Seal.KeyFile}; processes reading that file seal with it within {Sealing.ReloadInterval.TotalSeconds:0} s");
            // Let running processes reread the file before re-sealing, so what they write next is sealed with the new key too.
            await Task.Delay(Sealing.ReloadInterval + TimeSpan.FromSeconds(1), ct);
        }
        var ring = Sealing.Ring;
        await using var store = EtcdStore.Connect(settings);
        store.CheckSchemaBeforeWrites("dingo rotate-key", _ => { });
        var objects = settings.Backups is { Enabled: true } backups ? backups.Store.CreateStore() : null;
        RotationReport report;
        try
        {
            report = await SealKeyRotation.RotateAsync(store, objects, ring, ct);
        }
        catch (Grpc.Core.RpcException ex)
        {
            await Console.Error.WriteLineAsync($"dingo rotate-key: etcd ({string.Join(",", settings.EtcdEndpoints)}): {ex.Status.Detail}");
            return 1;
        }
        catch (SchemaVersionException ex)
        {
            await Console.Error.WriteLineAsync($"dingo rotate-key: {ex.Message}");
            return SchemaVersion.RefusedExitCode;
        }
        finally
        {
            (objects as IDisposable)?.Dispose();
        }
        await output.WriteLineAsync($"rotate-key: {report}");
        var old = ring.Ids.Where(id => id != ring.CurrentId).ToList();
        if (old.Count > 0)
            await output.WriteLineAsync($"older keys ({string.Join(", ", old)}) may be removed once every process has {ring.CurrentId} and a second run of dingo rotate-key re-seals nothing");
        return report.Failures.Count == 0 ? 0 : 1;
    }
}
