using System.Text;
using Dingo.Backups;
using Dingo.Broker;
using Dingo.Model;
using Dingo.Postgres;
using Dingo.Security;
using Dingo.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;

namespace Dingo.Tests.Security;

/// <summary>
/// A real platform provisions and binds; then etcd and the object store are read raw (every key, every file, and the
/// cluster-data backup written to the S3 stand-in) and no generated password may appear anywhere. Then `dingo rotate-key`
/// (the built CLI, as an operator runs it) re-seals everything, old plain records included, with the next key.
/// </summary>
[SuiteCost(16)]
public sealed class SecretsAtRestTests(ITestOutputHelper output)
{
    private const string LegacyInstance = "legacy-instance";
    private const string LegacyPassword = "LegacyPlainPassword0123456789";

    [Fact]
    public async Task No_password_is_readable_in_etcd_or_the_object_store_and_rotate_key_reseals_everything()
    {
        await using var p = await TestPlatform.StartAsync(cells: 1);
        var instanceId = "seal-" + Guid.NewGuid().ToString("N")[..8];
        var bindingId = "bind-" + Guid.NewGuid().ToString("N")[..8];
        await p.ProvisionReadyAsync(instanceId);
        var credentials = await p.BindAsync(instanceId, bindingId);
        var instance = (await p.Store.GetAsync<InstanceRecord>(p.Store.Keys.Instance(instanceId), CancellationToken.None))!.Value;
        var secrets = new[] { (string)credentials["password"]!, instance.Superuser.Password, instance.Replication!.Password };
        Assert.All(secrets, s => Assert.True(s.Length >= 20, "a generated password"));
        // The platform CA's private key (made at the first need) and the nodes' keys: never in clear outside their files.
        var caKey = (await p.Store.GetAsync<PlatformCaRecord>(p.Store.Keys.PlatformCa, CancellationToken.None))!.Value.Key.Password;
        Assert.Equal((string)credentials["ca_certificate"]!, (await p.Store.GetAsync<PlatformCaRecord>(p.Store.Keys.PlatformCa, CancellationToken.None))!.Value.Certificate);
        var nodeKeyFiles = Directory.GetFiles(p.Settings.DataDir, "server.key", SearchOption.AllDirectories);
        Assert.NotEmpty(nodeKeyFiles);
        Assert.All(nodeKeyFiles, f => Assert.True(File.GetUnixFileMode(f) == SecretFile.Mode, $"{f} has mode {File.GetUnixFileMode(f)}"));
        Assert.All(nodeKeyFiles, f => Assert.True(File.GetUnixFileMode(Path.GetDirectoryName(f)!) == SecretFile.FolderMode, $"{Path.GetDirectoryName(f)} has mode {File.GetUnixFileMode(Path.GetDirectoryName(f)!)}"));
        var keyLines = new[] { caKey }.Concat(nodeKeyFiles.Select(File.ReadAllText))
            .SelectMany(pem => pem.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Where(l => !l.StartsWith("-----", StringComparison.Ordinal) && l.Length >= 16))
            .ToArray();
        Assert.NotEmpty(keyLines);
        secrets = [.. secrets, .. keyLines];

        // Records as a version before sealing wrote them: read still, sealed by the rotation.
        var legacyKey = p.Store.Keys.Binding(LegacyInstance, "legacy-binding");
        await p.Store.PutStringAsync(legacyKey, $$"""{"id":"legacy-binding","instanceId":"{{LegacyInstance}}","serviceId":"s","planId":"p","role":{"username":"b_legacy","password":"{{LegacyPassword}}"},"state":"ready"}""", CancellationToken.None);
        Assert.Equal(LegacyPassword, (await p.Store.GetAsync<BindingRecord>(legacyKey, CancellationToken.None))!.Value.Role.Password);
        var objects = p.Settings.Backups!.Store.CreateStore();
        using (var legacy = new MemoryStream(Encoding.UTF8.GetBytes(LegacyClusterData)))
            await objects.PutAsync(ArchiveLayout.InstanceRecord(LegacyInstance), legacy);

        // The broker's cluster-data backup holds the instance with its binding.
        await Eventually.UntilAsync(async () => await RawObjectAsync(objects, ArchiveLayout.InstanceRecord(instanceId)) is { } raw && raw.Contains(bindingId, StringComparison.Ordinal),
            TimeSpan.FromSeconds(30), "the cluster-data backup holds the instance and its binding");

        // etcd, raw: no generated password in any value; every password there sealed with the current key.
        var etcd = await p.Store.ListRawAsync(p.Settings.EtcdPrefix + "/", CancellationToken.None);
        output.WriteLine($"etcd: {etcd.Count} keys under {p.Settings.EtcdPrefix}");
        AssertNoSecret(secrets, etcd.Select(kv => ($"etcd {kv.Key}", kv.Value)));
        var sealedInEtcd = Census(etcd.Where(kv => kv.Key != legacyKey).Select(kv => kv.Value));
        Assert.Equal(new Dictionary<string, int> { [TestSealKey.CurrentId] = 4 }, sealedInEtcd); // superuser, replication, the binding's role, the CA's key
        Assert.DoesNotContain(etcd, kv => kv.Value.Contains("PRIVATE KEY", StringComparison.Ordinal));
        // The local-folder object store, raw: every file (cluster data, WAL, base backups) created 0600, none with a password.
        var folder = ((LocalFolderObjectStore)objects).Folder;
        var files = ReadFolderRaw(folder);
        output.WriteLine($"object store: {files.Count} files in {folder}");
        Assert.Contains(files, f => f.Path.EndsWith($"{instanceId}.json", StringComparison.Ordinal));
        Assert.All(files, f => Assert.True(f.Mode == SecretFile.Mode, $"{f.Path} has mode {f.Mode}"));
        Assert.All(FolderModes(folder), d => Assert.True(d.Mode == SecretFile.FolderMode, $"{d.Path} has mode {d.Mode}"));
        AssertNoSecret(secrets, files.Select(f => ($"file {f.Path}", f.Text)));

        // The same writer into the S3 stand-in: read back raw over the S3 API.
        var s3 = TestObjectStores.NewS3Store();
        var s3Backup = new ClusterDataBackup(p.Store, s3, new Recovery(p.Store, s3, p.Settings, NullLogger<Recovery>.Instance), p.Settings, NullLogger<ClusterDataBackup>.Instance);
        try
        {
            await s3Backup.SyncAsync(CancellationToken.None);
            var raw = await RawObjectAsync(s3, ArchiveLayout.InstanceRecord(instanceId));
            Assert.NotNull(raw);
            Assert.Contains(bindingId, raw);
            AssertNoSecret(secrets, [("s3 object", raw)]);
            Assert.Equal(new Dictionary<string, int> { [TestSealKey.CurrentId] = 3 }, Resealing.Census(raw));
        }
        finally
        {
            await s3.DeleteAsync(ArchiveLayout.InstanceRecord(instanceId));
            await s3.DeleteAsync(ArchiveLayout.InstanceRecord(LegacyInstance));
        }

        // rotate-key: the next key first (given inline, as DINGO_SEAL_KEYS does), the current one still accepted.
        var (code, text) = await DingoCliAsync(p, ["rotate-key"], new() { [SealSettings.KeysVariable] = $"{TestSealKey.NextKey},{TestSealKey.CurrentKey}" });
        output.WriteLine(text);
        Assert.True(code == 0, text);
        Assert.Contains($"with {TestSealKey.NextId}", text);
        var rotated = await p.Store.ListRawAsync(p.Settings.EtcdPrefix + "/", CancellationToken.None);
        var clusterData = new List<string>();
        foreach (var o in await objects.ListAsync(ArchiveLayout.ClusterData)) clusterData.Add((await RawObjectAsync(objects, o.Key))!);
        AssertNoSecret([.. secrets, LegacyPassword], rotated.Select(kv => ($"etcd {kv.Key}", kv.Value)).Concat(clusterData.Select(c => ("cluster data", c))));
        Assert.Equal([TestSealKey.NextId], Census(rotated.Select(kv => kv.Value).Concat(clusterData)).Keys);
        // The old key may go now: the next key alone opens every password.
        var nextOnly = SealKeyRing.Parse(TestSealKey.NextKey, "the next key");
        var role = System.Text.Json.Nodes.JsonNode.Parse(rotated.Single(kv => kv.Key == p.Store.Keys.Binding(instanceId, bindingId)).Value)!["role"]!;
        Assert.Equal(secrets[0], nextOnly.Open((string)role["password"]!, CredentialsJsonConverter.Purpose((string)role["username"]!)));
        Assert.Equal(LegacyPassword, nextOnly.Open(Json.Deserialize<System.Text.Json.Nodes.JsonObject>(rotated.Single(kv => kv.Key == legacyKey).Value)["role"]!["password"]!.GetValue<string>(), "credentials:b_legacy"));

        // The platform reads what the rotation wrote: the binding hands out the same password.
        var (status, fetched) = await p.SendAsync(HttpMethod.Get, $"/v2/service_instances/{instanceId}/service_bindings/{bindingId}");
        Assert.Equal(200, status);
        Assert.Equal(secrets[0], (string?)fetched["credentials"]?["password"]);

        // A second run finds nothing left to re-seal.
        (code, text) = await DingoCliAsync(p, ["rotate-key"], new() { [SealSettings.KeysVariable] = $"{TestSealKey.NextKey},{TestSealKey.CurrentKey}" });
        Assert.True(code == 0, text);
        Assert.Contains("re-sealed 0 etcd value(s) and 0 cluster-data object(s)", text);

        // A console without the key says which setting it needs (no stack trace), and a broker without one refuses to start.
        var noKey = Path.Combine(p.Settings.DataDir, "no-key.conf");
        await File.WriteAllTextAsync(noKey, "dingo.security.seal-key-file = \"\"\n");
        (code, text) = await DingoCliAsync(p, ["status", "--config", noKey], []);
        output.WriteLine(text);
        Assert.Equal(1, code);
        Assert.Contains("no seal key", text);
        Assert.Contains(SealSettings.KeysVariable, text);
        Assert.DoesNotContain("   at ", text);
        (code, text) = await RunAsync("dotnet", [Path.Combine(AppContext.BaseDirectory, "Dingo.Broker.dll"), "--config", Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf"),
            "--config", Path.Combine(p.Settings.DataDir, "test.conf"), "--config", noKey], []);
        Assert.Equal(2, code);
        Assert.Contains("no seal key", text);
    }

    /// <summary>A cluster-data record as written before sealing: the superuser's password plain.</summary>
    private static string LegacyClusterData =>
        "{\"instance\":{\"id\":\"" + LegacyInstance + "\",\"serviceId\":\"s\",\"planId\":\"p\",\"organizationGuid\":\"o\",\"spaceGuid\":\"sp\"," +
        "\"port\":1,\"nodeCount\":1,\"superuser\":{\"username\":\"dingo_admin\",\"password\":\"" + LegacyPassword + "\"}},\"bindings\":[]}";

    private static Dictionary<string, int> Census(IEnumerable<string> values)
    {
        var total = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var v in values)
            foreach (var (id, n) in Resealing.Census(v)) total[id] = total.GetValueOrDefault(id) + n;
        return total;
    }

    /// <summary>
    /// The mode of every folder under the store's. The archiver is running meanwhile: a segment's "parts" folder listed
    /// here can be removed before its mode is read (its segment became whole, fresh70), so a folder gone by then is
    /// skipped; every folder still there is checked.
    /// </summary>
    private static List<(string Path, UnixFileMode Mode)> FolderModes(string folder)
    {
        var modes = new List<(string, UnixFileMode)>();
        foreach (var d in Directory.GetDirectories(folder, "*", SearchOption.AllDirectories))
        {
            try { modes.Add((d, File.GetUnixFileMode(d))); }
            catch (Exception e) when ((e is FileNotFoundException or DirectoryNotFoundException) && !Directory.Exists(d)) { }
        }
        Assert.NotEmpty(modes);
        return modes;
    }

    /// <summary>
    /// Every file of a folder the platform keeps writing (the archiver runs on): mode and bytes read together. A file
    /// that goes away between the listing and the read was a write in flight (a temporary file renamed into place);
    /// so is a temporary file its writer still holds exclusively (.NET's FileShare.None: the read is refused as "used
    /// by another process", fresh14). The folder is then listed again a moment later, so the file is read under its
    /// final name, whole, instead of skipped.
    /// </summary>
    private static List<(string Path, UnixFileMode Mode, string Text)> ReadFolderRaw(string folder)
    {
        for (var attempt = 1; ; attempt++)
        {
            var read = new List<(string, UnixFileMode, string)>();
            var current = "";
            try
            {
                foreach (var f in Directory.GetFiles(folder, "*", SearchOption.AllDirectories))
                {
                    current = f;
                    read.Add((f, File.GetUnixFileMode(f), Encoding.Latin1.GetString(File.ReadAllBytes(f))));
                }
                return read;
            }
            catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException && attempt < 20) { }
            catch (IOException) when (current.Contains($"{Path.DirectorySeparatorChar}.dingo-tmp{Path.DirectorySeparatorChar}", StringComparison.Ordinal) && attempt < 20)
            {
                Thread.Sleep(50);
            }
        }
    }

    private static void AssertNoSecret(IReadOnlyList<string> secrets, IEnumerable<(string Where, string Text)> places)
    {
        foreach (var (where, text) in places)
            foreach (var secret in secrets)
                Assert.False(text.Contains(secret, StringComparison.Ordinal), $"{where} holds a password in the clear");
    }

    private static async Task<string?> RawObjectAsync(IObjectStore store, string key)
    {
        using var ms = new MemoryStream();
        try { await store.GetAsync(key, ms); }
        catch (ObjectNotFoundException) { return null; }
        return Encoding.UTF8.GetString(ms.ToArray());
    }

    /// <summary>The built CLI (src/Dingo.Cli) against the platform's settings, from a DINGO_HOME with no key of its own.</summary>
    private static Task<(int Code, string Output)> DingoCliAsync(TestPlatform p, string[] args, Dictionary<string, string> env)
    {
        var dll = ProgramRun.ConsoleDll;
        var home = Path.Combine(p.Settings.DataDir, "cli-home");
        Directory.CreateDirectory(Path.Combine(home, "hocon"));
        File.Copy(Path.Combine(TestPlatform.RepoRoot(), "hocon", "dingo.conf"), Path.Combine(home, "hocon", "dingo.conf"), overwrite: true);
        var config = new[] { "--config", Path.Combine(p.Settings.DataDir, "test.conf") };
        // The first argument is the command; --config files follow in order (the last wins).
        var all = new[] { dll, args[0] }.Concat(config).Concat(args.Skip(1)).ToArray();
        return RunAsync("dotnet", all, new Dictionary<string, string>(env) { ["DINGO_HOME"] = home });
    }

    /// <summary>The test process's own seal settings must not leak into the child: it gets only what the test gives it.</summary>
    private static Task<(int Code, string Output)> RunAsync(string file, string[] args, Dictionary<string, string> env) =>
        ProgramRun.RunAsync(file, args, env,
            unset: env.ContainsKey(SealSettings.KeysVariable) ? [SealSettings.KeyFileVariable] : [SealSettings.KeysVariable, SealSettings.KeyFileVariable]);
}
