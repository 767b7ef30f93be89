using System.Text.Json.Nodes;
using Dingo.Model;

namespace Dingo.Broker;

/// <summary>The OSB `credentials` of a binding, as Cloud Foundry hands them to an application.</summary>
public static class BindingCredentials
{
    /// <summary>What the URIs ask of a client's TLS: encrypted, and the node's certificate checked for the binding host.</summary>
    public const string SslMode = "verify-full";

    public static JsonObject Json(string host, InstanceRecord instance, BindingRecord binding, string caCertificatePem)
    {
        var port = instance.Port;
        var user = binding.Role.Username;
        var password = binding.Role.Password;
        var db = instance.Database;
        var credentials = new JsonObject
        {
            ["uri"] = $"postgres://{user}:{password}@{host}:{port}/{db}?sslmode={SslMode}",
            ["jdbcUrl"] = $"jdbc:postgresql://{host}:{port}/{db}?user={user}&password={password}&ssl=true&sslmode={SslMode}",
            ["host"] = host,
            ["port"] = port,
            ["username"] = user,
            ["password"] = password,
            ["database"] = db,
            ["sslmode"] = SslMode,
            // Write it to a file and name that file as sslrootcert (libpq, JDBC); without it verify-full cannot succeed.
            ["ca_certificate"] = caCertificatePem,
        };
        if (instance.ReadOnlyPort > 0)
        {
            // Reads that may lag a little: balanced over healthy replicas (the primary when none qualifies).
            credentials["read_only_uri"] = $"postgres://{user}:{password}@{host}:{instance.ReadOnlyPort}/{db}?sslmode={SslMode}";
            credentials["read_only_port"] = instance.ReadOnlyPort;
        }
        return new JsonObject { ["credentials"] = credentials };
    }
}
