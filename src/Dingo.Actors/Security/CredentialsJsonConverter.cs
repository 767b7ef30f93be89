using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Dingo.Model;

namespace Dingo.Security;

/// <summary>
/// Credentials as etcd and the object store hold them: <c>{"username": "...", "password": "dingo-sealed:v1:..."}</c>,
/// the password sealed with this process's current key for the purpose "credentials:&lt;username&gt;". A plain password
/// (a record written before sealing) is still read; it is sealed when the record is next written, or by
/// `dingo rotate-key`.
/// </summary>
public sealed class CredentialsJsonConverter : JsonConverter<Credentials>
{
    public static string Purpose(string username) => "credentials:" + username;

    public override Credentials Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        var (username, password) = ReadPair(ref reader);
        if (!SealKeyRing.IsSealed(password)) return new Credentials(username, password);
        var keyId = SealKeyRing.KeyIdOf(password) ?? "";
        return new Credentials(username, Sealing.RingWith(keyId).Open(password, Purpose(username)));
    }

    public override void Write(Utf8JsonWriter writer, Credentials value, JsonSerializerOptions options) =>
        WritePair(writer, value.Username, Sealing.Ring.Seal(value.Password, Purpose(value.Username)));

    internal static (string Username, string Password) ReadPair(ref Utf8JsonReader reader)
    {
        if (reader.TokenType != JsonTokenType.StartObject) throw new JsonException("credentials must be a JSON object");
        string? username = null, password = null;
        while (reader.Read() && reader.TokenType != JsonTokenType.EndObject)
        {
            var name = reader.GetString();
            reader.Read();
            if (string.Equals(name, "username", StringComparison.OrdinalIgnoreCase)) username = reader.GetString();
            else if (string.Equals(name, "password", StringComparison.OrdinalIgnoreCase)) password = reader.GetString();
            else reader.Skip();
        }
        if (username is null || password is null) throw new JsonException("credentials need a username and a password");
        return (username, password);
    }

    internal static void WritePair(Utf8JsonWriter writer, string username, string password)
    {
        writer.WriteStartObject();
        writer.WriteString("username", username);
        writer.WriteString("password", password);
        writer.WriteEndObject();
    }
}

/// <summary>
/// A digest of a record with its passwords plain: sealing draws a new nonce every time, so two sealed serialisations of
/// one record never match; this does, and keeps no password (only a hash) for the comparison.
/// </summary>
public static class SealedJson
{
    private static readonly JsonSerializerOptions PlainOptions = new(Json.Options) { Converters = { new PlainCredentials() } };

    public static string Fingerprint<T>(T value) =>
        Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(JsonSerializer.Serialize(value, PlainOptions))));

    // Options' converters win over the type's [JsonConverter]: used only for the digest above, never written anywhere.
    private sealed class PlainCredentials : JsonConverter<Credentials>
    {
        public override Credentials Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
            throw new NotSupportedException("plain credentials are never read");

        public override void Write(Utf8JsonWriter writer, Credentials value, JsonSerializerOptions options) =>
            CredentialsJsonConverter.WritePair(writer, value.Username, value.Password);
    }
}
