using System.Text.Json.Nodes;
using Dingo.Config;
using Dingo.Postgres;
using Dingo.Security;
using Dingo.Tests.Support;

namespace Dingo.Tests.Security;

/// <summary>The platform CA in a real etcd: made once however many processes race for it, never replaced when broken.</summary>
public sealed class PlatformCaStoreTests
{
    [Fact]
    public async Task Processes_racing_at_the_first_start_agree_on_one_ca_whose_key_is_sealed()
    {
        await using var store = TestEtcd.NewStore(out _);
        var all = await Task.WhenAll(Enumerable.Range(0, 6).Select(_ => Task.Run(() => PlatformCaStore.GetOrCreateAsync(store, new PostgresTlsSettings(), CancellationToken.None))));
        try
        {
            Assert.Single(all.Select(ca => ca.Fingerprint).Distinct());
            var raw = (await store.GetRawAsync(store.Keys.PlatformCa, CancellationToken.None))!.Value;
            Assert.DoesNotContain("PRIVATE KEY", raw, StringComparison.Ordinal);
            Assert.StartsWith(SealKeyRing.Prefix, (string)JsonNode.Parse(raw)!["key"]!["password"]!, StringComparison.Ordinal);
            Assert.Equal(all[0].CertificatePem, await PlatformCaStore.CertificateAsync(store, CancellationToken.None));
            // Read again later: the same CA, able to sign.
            using var again = await PlatformCaStore.GetOrCreateAsync(store, new PostgresTlsSettings(), CancellationToken.None);
            Assert.Equal(all[0].Fingerprint, again.Fingerprint);
            Assert.True(all[0].Verifies(again.Issue("n-1", ["127.0.0.1"], DateTimeOffset.UtcNow, TimeSpan.FromDays(1)).CertificatePem, DateTimeOffset.UtcNow));
        }
        finally
        {
            foreach (var ca in all) ca.Dispose();
            await store.DeletePrefixAsync(store.Keys.Root + "/", CancellationToken.None);
        }
    }

    [Fact]
    public async Task A_stored_ca_that_does_not_open_is_an_error_and_is_never_replaced()
    {
        await using var store = TestEtcd.NewStore(out _);
        try
        {
            using (await PlatformCaStore.GetOrCreateAsync(store, new PostgresTlsSettings(), CancellationToken.None)) { }
            var raw = (await store.GetRawAsync(store.Keys.PlatformCa, CancellationToken.None))!.Value;
            // Someone with write access to etcd swaps in another certificate: the key no longer matches it.
            using var other = PlatformCa.Create("intruder", DateTimeOffset.UtcNow, TimeSpan.FromDays(1));
            var node = JsonNode.Parse(raw)!;
            node["certificate"] = other.CertificatePem;
            await store.PutStringAsync(store.Keys.PlatformCa, node.ToJsonString(), CancellationToken.None);
            var error = await Assert.ThrowsAsync<PlatformCaException>(() => PlatformCaStore.GetOrCreateAsync(store, new PostgresTlsSettings(), CancellationToken.None));
            Assert.Contains("cannot be used", error.Message, StringComparison.Ordinal);
            Assert.DoesNotContain("PRIVATE KEY", error.Message, StringComparison.Ordinal);
            Assert.Equal(node.ToJsonString(), (await store.GetRawAsync(store.Keys.PlatformCa, CancellationToken.None))!.Value);

            // A sealed key altered by a byte: sealing refuses it, and the record stays as it is.
            node["certificate"] = JsonNode.Parse(raw)!["certificate"]!.GetValue<string>();
            var sealedKey = node["key"]!["password"]!.GetValue<string>();
            node["key"]!["password"] = sealedKey[..^4] + (sealedKey[^4] == 'A' ? 'B' : 'A') + sealedKey[^3..];
            await store.PutStringAsync(store.Keys.PlatformCa, node.ToJsonString(), CancellationToken.None);
            await Assert.ThrowsAsync<SealException>(() => PlatformCaStore.GetOrCreateAsync(store, new PostgresTlsSettings(), CancellationToken.None));
            Assert.Equal(node.ToJsonString(), (await store.GetRawAsync(store.Keys.PlatformCa, CancellationToken.None))!.Value);
        }
        finally
        {
            await store.DeletePrefixAsync(store.Keys.Root + "/", CancellationToken.None);
        }
    }

    [Fact]
    public async Task An_operators_ca_from_files_replaces_generation_and_etcd_carries_its_certificate()
    {
        await using var store = TestEtcd.NewStore(out _);
        var folder = Directory.CreateTempSubdirectory("dingo-ca-");
        try
        {
            using (await PlatformCaStore.GetOrCreateAsync(store, new PostgresTlsSettings(), CancellationToken.None)) { } // a generated one first
            using var operatorCa = PlatformCa.Create($"operator {Guid.NewGuid():N}", DateTimeOffset.UtcNow, TimeSpan.FromDays(365));
            var settings = new PostgresTlsSettings { CaCertFile = Path.Combine(folder.FullName, "ca.pem"), CaKeyFile = Path.Combine(folder.FullName, "ca.key") };
            await File.WriteAllTextAsync(settings.CaCertFile, operatorCa.CertificatePem);
            await SecretFile.WriteAsync(settings.CaKeyFile, operatorCa.ExportKeyPem(), CancellationToken.None);
            using var used = await PlatformCaStore.GetOrCreateAsync(store, settings, CancellationToken.None);
            Assert.Equal(operatorCa.Fingerprint, used.Fingerprint);
            Assert.Equal(operatorCa.CertificatePem, await PlatformCaStore.CertificateAsync(store, CancellationToken.None));
            // A process without the files (a broker, say) now reads the operator's CA from etcd.
            using var read = await PlatformCaStore.GetOrCreateAsync(store, new PostgresTlsSettings(), CancellationToken.None);
            Assert.Equal(operatorCa.Fingerprint, read.Fingerprint);
        }
        finally
        {
            folder.Delete(recursive: true);
            await store.DeletePrefixAsync(store.Keys.Root + "/", CancellationToken.None);
        }
    }
}
