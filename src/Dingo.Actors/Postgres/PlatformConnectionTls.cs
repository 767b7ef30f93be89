using Npgsql;

namespace Dingo.Postgres;

/// <summary>
/// How the platform's own Npgsql connections to its nodes (HA probes, role and database preparation, archiving, drills)
/// use TLS. Offered by default (<c>SSL Mode=Prefer</c>): TLS whenever the node serves it. With
/// <c>dingo.postgres.require-tls</c> the node serves TLS to everyone, and these connections require it too, with SCRAM
/// channel binding: someone on the path can neither strip TLS (a refused downgrade instead of a superuser session in
/// clear) nor relay the login through a TLS session of his own (the binding names the server's certificate). The
/// certificate itself is not checked against the platform CA here; channel binding is what stops the relay
/// (docs/security.md).
/// </summary>
public static class PlatformConnectionTls
{
    private static volatile bool _required;

    /// <summary>Whether this process's connections require TLS (set once at start by the cell, broker and console).</summary>
    public static bool Required => _required;

    /// <summary>Called by a process's Main from its settings; in-process test platforms leave the default (offered).</summary>
    public static void Configure(bool requireTls) => _required = requireTls;

    /// <summary>Sets <paramref name="builder"/>'s TLS for a connection to a node.</summary>
    public static NpgsqlConnectionStringBuilder Apply(NpgsqlConnectionStringBuilder builder, bool required)
    {
        builder.SslMode = required ? SslMode.Require : SslMode.Prefer;
        builder.ChannelBinding = required ? ChannelBinding.Require : ChannelBinding.Prefer;
        return builder;
    }
}
