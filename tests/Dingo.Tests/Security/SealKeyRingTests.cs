using Dingo.Tests.Support;
using System.Text.Json;
using Dingo.Model;
using Dingo.Security;

namespace Dingo.Tests.Security;

/// <summary>Sealing and opening secrets: the rules every password at rest depends on.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class SealKeyRingTests
{
    private static byte[] NewKey() => Convert.FromBase64String(SealKeyRing.NewKeyText());

    [Fact]
    public void A_sealed_value_opens_to_the_plain_value_and_shows_nothing_of_it()
    {
        var ring = new SealKeyRing([NewKey()]);
        var text = ring.Seal("s3cret-Password-42", "credentials:app");
        Assert.StartsWith($"dingo-sealed:v1:{ring.CurrentId}:", text);
        Assert.DoesNotContain("s3cret", text);
        Assert.Equal("s3cret-Password-42", ring.Open(text, "credentials:app"));
    }

    [Fact]
    public void Each_seal_draws_a_new_nonce()
    {
        var ring = new SealKeyRing([NewKey()]);
        Assert.NotEqual(ring.Seal("same", "p"), ring.Seal("same", "p"));
    }

    [Fact]
    public void An_altered_sealed_value_is_refused()
    {
        var ring = new SealKeyRing([NewKey()]);
        var text = ring.Seal("password", "credentials:app");
        var parts = text.Split(':');
        var data = Convert.FromBase64String(parts[3]);
        foreach (var index in new[] { 0, 12, data.Length - 1 }) // nonce, ciphertext, tag
        {
            var altered = data.ToArray();
            altered[index] ^= 0x01;
            var ex = Assert.Throws<SealException>(() => ring.Open($"{parts[0]}:{parts[1]}:{parts[2]}:{Convert.ToBase64String(altered)}", "credentials:app"));
            Assert.Contains("fails authentication", ex.Message);
        }
        Assert.Throws<SealException>(() => ring.Open($"{parts[0]}:{parts[1]}:{parts[2]}:{Convert.ToBase64String(data[..20])}", "credentials:app"));
    }

    [Fact]
    public void A_value_moved_to_another_purpose_is_refused()
    {
        var ring = new SealKeyRing([NewKey()]);
        var text = ring.Seal("password", "credentials:b_alice");
        Assert.Throws<SealException>(() => ring.Open(text, "credentials:b_mallory"));
    }

    [Fact]
    public void A_value_sealed_with_a_key_the_ring_lacks_names_that_key()
    {
        var sealer = new SealKeyRing([NewKey()]);
        var other = new SealKeyRing([NewKey()]);
        var ex = Assert.Throws<SealKeyUnknownException>(() => other.Open(sealer.Seal("pw", "p"), "p"));
        Assert.Equal(sealer.CurrentId, ex.KeyId);
        Assert.Contains(sealer.CurrentId, ex.Message);
    }

    [Fact]
    public void A_value_relabelled_with_another_key_id_is_refused()
    {
        var (a, b) = (NewKey(), NewKey());
        var ring = new SealKeyRing([a, b]);
        var text = ring.Seal("pw", "p");
        var relabelled = text.Replace(SealKeyRing.IdOf(a), SealKeyRing.IdOf(b), StringComparison.Ordinal);
        Assert.Throws<SealException>(() => ring.Open(relabelled, "p"));
    }

    [Fact]
    public void Rotation_opens_with_the_old_key_and_seals_with_the_new_one()
    {
        var (oldKey, newKey) = (NewKey(), NewKey());
        var before = new SealKeyRing([oldKey]);
        var record = Json(before.Seal("pw-1", "credentials:u1"), "u1");
        var after = new SealKeyRing([newKey, oldKey]);
        Assert.True(Resealing.NeedsReseal(record, after));
        var resealed = Resealing.Reseal(record, after)!;
        Assert.Equal(new Dictionary<string, int> { [after.CurrentId] = 1 }, Resealing.Census(resealed));
        Assert.Null(Resealing.Reseal(resealed, after)); // nothing left to do
        // Once re-sealed, the old key can go: the new key alone opens it.
        var onlyNew = new SealKeyRing([newKey]);
        Assert.Equal("pw-1", onlyNew.Open(JsonDocument.Parse(resealed).RootElement.GetProperty("role").GetProperty("password").GetString()!, "credentials:u1"));
        Assert.Throws<SealKeyUnknownException>(() => onlyNew.Open(before.Seal("pw-2", "p"), "p"));
    }

    [Fact]
    public void A_plain_password_written_before_sealing_is_read_and_sealed_on_rewrite()
    {
        var ring = new SealKeyRing([NewKey()]);
        Assert.Equal("legacy-pw", ring.Open("legacy-pw", "credentials:u"));
        var legacy = Json("legacy-pw", "u");
        Assert.Equal(new Dictionary<string, int> { ["plain"] = 1 }, Resealing.Census(legacy));
        var resealed = Resealing.Reseal(legacy, ring)!;
        Assert.DoesNotContain("legacy-pw", resealed);
        Assert.False(Resealing.NeedsReseal(resealed, ring));
    }

    [Fact]
    public void Credentials_are_stored_sealed_and_legacy_records_still_read()
    {
        // Through the record's own JSON (etcd and the object store both use it), with this process's keys.
        var binding = new BindingRecord { Id = "b1", InstanceId = "i1", ServiceId = "s", PlanId = "p", Role = new Credentials("b_role", "Plain-Password-1") };
        var json = Dingo.Model.Json.Serialize(binding);
        Assert.DoesNotContain("Plain-Password-1", json);
        Assert.Equal(new Dictionary<string, int> { [TestSealKey.CurrentId] = 1 }, Resealing.Census(json));
        Assert.Equal(binding.Role, Dingo.Model.Json.Deserialize<BindingRecord>(json).Role);

        var legacy = """{"id":"b1","instanceId":"i1","serviceId":"s","planId":"p","role":{"username":"b_role","password":"Plain-Password-1"}}""";
        Assert.Equal("Plain-Password-1", Dingo.Model.Json.Deserialize<BindingRecord>(legacy).Role.Password);
    }

    [Fact]
    public void A_record_digest_ignores_the_nonce_but_not_the_password()
    {
        var a = new InstanceRecordDigestCase("pw-a");
        Assert.Equal(SealedJson.Fingerprint(a.Record), SealedJson.Fingerprint(a.Record with { }));
        Assert.NotEqual(SealedJson.Fingerprint(a.Record), SealedJson.Fingerprint(a.Record with { Role = new Credentials("b_role", "pw-b") }));
        Assert.DoesNotContain("pw-a", SealedJson.Fingerprint(a.Record));
    }

    [Theory]
    [InlineData("", "holds no seal key")]
    [InlineData("# only a comment\n", "holds no seal key")]
    [InlineData("not base64!", "line 1: not a base64 key")]
    [InlineData("# c\nAAAA", "line 2: a seal key must be 32 bytes")]
    public void Malformed_keys_are_refused_naming_where_they_came_from(string text, string expected)
    {
        var ex = Assert.Throws<SealException>(() => SealKeyRing.Parse(text, "seal key file /etc/dingo/seal.key"));
        Assert.Contains("/etc/dingo/seal.key", ex.Message);
        Assert.Contains(expected, ex.Message);
    }

    [Fact]
    public void Keys_parse_from_lines_or_commas_with_the_first_current()
    {
        var (a, b) = (SealKeyRing.NewKeyText(), SealKeyRing.NewKeyText());
        var fromLines = SealKeyRing.Parse($"# keys\n{a}\n\n{b}\n", "file");
        var fromCommas = SealKeyRing.Parse($"{a}, {b}", "env");
        Assert.Equal(fromLines.Ids, fromCommas.Ids);
        Assert.Equal(SealKeyRing.IdOf(Convert.FromBase64String(a)), fromLines.CurrentId);
        Assert.DoesNotContain(a, fromLines.ToString());
    }

    [Fact]
    public async Task A_key_file_and_secret_files_are_created_0600_and_a_new_key_goes_first()
    {
        var dir = Path.Combine(Path.GetTempPath(), "dingo-tests", "sealfile-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            var file = Path.Combine(dir, "secrets", "seal.key");
            Assert.True(await SealKeyFile.EnsureAsync(file, CancellationToken.None));
            Assert.False(await SealKeyFile.EnsureAsync(file, CancellationToken.None));
            Assert.Equal(SecretFile.Mode, File.GetUnixFileMode(file));
            Assert.Equal(SecretFile.FolderMode, File.GetUnixFileMode(Path.GetDirectoryName(file)!));
            var first = SealKeyRing.Parse(await File.ReadAllTextAsync(file), file);
            var added = await SealKeyFile.AddCurrentKeyAsync(file, CancellationToken.None);
            var second = SealKeyRing.Parse(await File.ReadAllTextAsync(file), file);
            Assert.Equal([added, first.CurrentId], second.Ids);
            Assert.Equal(SecretFile.Mode, File.GetUnixFileMode(file));
            // An existing secret file is replaced by one created 0600, whatever mode the old one had.
            var passfile = Path.Combine(dir, "pgpass");
            await File.WriteAllTextAsync(passfile, "old");
            File.SetUnixFileMode(passfile, (UnixFileMode)0b110_100_100);
            await SecretFile.WriteAsync(passfile, "*:*:*:u:pw\n", CancellationToken.None);
            Assert.Equal(SecretFile.Mode, File.GetUnixFileMode(passfile));
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        }
    }

    private sealed record InstanceRecordDigestCase(string Password)
    {
        public BindingRecord Record { get; } = new() { Id = "b", InstanceId = "i", ServiceId = "s", PlanId = "p", Role = new Credentials("b_role", Password) };
    }

    private static string Json(string password, string username) =>
        $$$"""{"id":"b1","role":{"username":"{{{username}}}","password":"{{{password}}}"}}""";
}
