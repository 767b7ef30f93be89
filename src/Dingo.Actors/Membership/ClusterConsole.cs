using System.Collections.Immutable;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Akka.Actor;
using Akka.Cluster.Tools.Client;
using Akka.Configuration;
using Dingo.Config;
using Dingo.Model;
using Dingo.Store;

namespace Dingo.Membership;

/// <summary>No broker answered the console, or one refused it: the message names the contacts it tried or the reason.</summary>
public sealed class ClusterConsoleException(string message) : Exception(message);

/// <summary>
/// What the console needs to ask a broker: the address its own remoting binds, the operator's credentials the
/// gateway checks, and (when the platform's remoting is TLS) this host's certificate and the platform CA.
/// </summary>
public sealed record ConsoleAccess(string Hostname, OperatorCredentials Credentials, AkkaTlsSettings Tls)
{
    public static ConsoleAccess From(DingoSettings settings) => new(settings.Akka.Hostname, OperatorCredentials.Presented(settings), settings.Akka.Tls);
}

/// <summary>
/// The operator console's way into the Akka cluster: a small actor system of its own (remoting only, never a
/// cluster member) whose ClusterClient asks a broker's <see cref="ConsoleGateway"/> through the receptionist.
/// </summary>
public static class ClusterConsole
{
    /// <summary>The console's actor system: its address (akka.tcp://dingo-console@host:port) tells brokers who asks.</summary>
    public const string SystemName = "dingo-console";

    /// <summary>The time `dingo members` waits for an answer.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan EtcdTimeout = TimeSpan.FromSeconds(3);

    /// <summary>
    /// Akka addresses of the brokers to contact: the configured seed nodes (or, with none, this host's broker at
    /// dingo.broker.akka-port), then every broker registered in etcd (read through <paramref name="store"/>, or a
    /// store of its own; an empty or unreachable etcd adds nothing).
    /// </summary>
    public static async Task<IReadOnlyList<string>> BrokerAddressesAsync(DingoSettings settings, EtcdStore? store, CancellationToken ct)
    {
        var addresses = new List<string>();
        if (settings.Akka.SeedNodes.Count > 0) addresses.AddRange(settings.Akka.SeedNodes);
        else addresses.Add(settings.Akka.MemberAddress(settings.Akka.Hostname, settings.Broker.AkkaPort));

        var own = store is null;
        store ??= EtcdStore.Connect(settings);
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(EtcdTimeout);
            var members = await store.ListAsync<AkkaMemberRecord>(store.Keys.AkkaMembers, timeout.Token).ConfigureAwait(false);
            addresses.AddRange(members.Select(m => m.Value).Where(m => m.Roles.Contains("broker")).Select(m => m.Address));
        }
        catch (Exception ex) when (!ct.IsCancellationRequested && ex is Grpc.Core.RpcException or OperationCanceledException or System.Text.Json.JsonException)
        {
            // etcd is only one of the two ways to find a broker: go on with the configured ones.
        }
        finally
        {
            if (own) await store.DisposeAsync().ConfigureAwait(false);
        }
        return addresses.Select(a => a.Trim().TrimEnd('/')).Where(a => a.Length > 0).Distinct(StringComparer.Ordinal).ToList();
    }

    /// <summary>The receptionist actor path on each broker: what the ClusterClient contacts first.</summary>
    public static IReadOnlyList<string> ContactsOf(IEnumerable<string> brokerAddresses) =>
        brokerAddresses.Select(a => a.TrimEnd('/') + "/system/receptionist").Distinct(StringComparer.Ordinal).ToList();

    /// <summary>Finds the brokers (<see cref="BrokerAddressesAsync"/>) and asks one of them.</summary>
    public static async Task<ClusterView> QueryAsync(DingoSettings settings, EtcdStore? store, TimeSpan timeout, CancellationToken ct)
    {
        var brokers = await BrokerAddressesAsync(settings, store, ct).ConfigureAwait(false);
        return await QueryAsync(ConsoleAccess.From(settings), brokers, timeout, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Starts the console's actor system on the access's hostname (a free port), asks whichever broker answers
    /// first for its <see cref="ClusterView"/> with the operator's credentials, and stops the system again. Throws
    /// <see cref="ClusterConsoleException"/> when no broker answers within <paramref name="timeout"/> or one refuses.
    /// </summary>
    public static async Task<ClusterView> QueryAsync(ConsoleAccess access, IReadOnlyList<string> brokerAddresses, TimeSpan timeout, CancellationToken ct)
    {
        var contacts = ContactsOf(brokerAddresses);
        var paths = new List<ActorPath>();
        foreach (var contact in contacts)
        {
            if (ActorPath.TryParse(contact, out var path)) paths.Add(path);
        }
        var hostname = ReachableHostname(access.Hostname, paths.Select(p => p.Address).ToList());
        if (paths.Count == 0)
            throw new ClusterConsoleException("no broker address to contact: set dingo.akka.seed-nodes (DINGO_AKKA_SEEDS) or register the brokers in etcd");

        AkkaTls? tls;
        try { tls = AkkaTls.Load(access.Tls); }
        catch (ArgumentException ex) { throw new ClusterConsoleException($"cannot use this host's Akka TLS certificate: {ex.Message}"); }
        // The console's system has one transport, plain or TLS: a contact of the other kind would fail the client's start
        // with Akka's stack trace (brokers registered in etcd on akka.ssl.tcp beside the default plain seed, say). Only
        // the reachable ones are asked; none left is one line saying what to set.
        var protocol = tls is null ? "akka.tcp" : "akka.ssl.tcp";
        var skipped = paths.RemoveAll(p => p.Address.Protocol != protocol);
        if (skipped > 0 && paths.Count == 0)
            throw new ClusterConsoleException(tls is null
                ? "the brokers speak Akka over TLS (akka.ssl.tcp): give this console a certificate of the platform's Akka CA " +
                  "(dingo.akka.tls: DINGO_AKKA_TLS_CA, DINGO_AKKA_TLS_CERTIFICATE, DINGO_AKKA_TLS_KEY; docs/security.md, \"Akka remoting over TLS\")"
                : "the brokers speak plain Akka (akka.tcp) and this console has an Akka TLS certificate: leave dingo.akka.tls unset for this platform");
        var setup = BootstrapSetup.Create().WithConfig(ConsoleConfig(hostname, tls is not null))
            .And(RemotingNoiseFilter.ForConsole());
        if (tls is not null) setup = setup.And(tls.Setup());
        ActorSystem system;
        try
        {
            system = ActorSystem.Create(SystemName, setup);
        }
        catch (Exception ex)
        {
            tls?.Dispose();
            // Typically an address that is not this host's (DINGO_AKKA_HOSTNAME copied from another host).
            throw new ClusterConsoleException($"cannot start the console's Akka remoting on {hostname} (dingo.akka.hostname, DINGO_AKKA_HOSTNAME): {Innermost(ex).Message}");
        }
        try
        {
            var settings = ClusterClientSettings.Create(system)
                .WithInitialContacts(paths.ToImmutableHashSet())
                .WithEstablishingGetContactsInterval(TimeSpan.FromSeconds(1));
            var client = system.ActorOf(ClusterClient.Props(settings), "client");
            try
            {
                var request = new ClusterViewRequest { Username = access.Credentials.Username, Password = access.Credentials.Password };
                var answer = await client.Ask<object>(new ClusterClient.Send(ConsoleGateway.Path, request, localAffinity: true), timeout, ct).ConfigureAwait(false);
                return answer switch
                {
                    ClusterView view => view,
                    ConsoleRefused refused => throw new ClusterConsoleException($"the broker refused the console: {refused.Reason}"),
                    _ => throw new ClusterConsoleException($"the broker answered the console with {answer.GetType().Name}, not a cluster view"),
                };
            }
            catch (AskTimeoutException)
            {
                var self = ((ExtendedActorSystem)system).Provider.DefaultAddress;
                throw new ClusterConsoleException(
                    $"no broker answered within {timeout.TotalSeconds.ToString(CultureInfo.InvariantCulture)}s; tried {string.Join(", ", contacts)}. " +
                    $"Is a broker up, and its Akka port (dingo.broker.akka-port) reachable from this host?" +
                    (tls is null ? "" : " Is this host's certificate (dingo.akka.tls.certificate) issued by the platform CA the brokers trust?") +
                    (skipped == 0 ? "" : tls is null
                        ? $" {skipped} broker address(es) on akka.ssl.tcp were not asked: this console has no Akka certificate (DINGO_AKKA_TLS_CA, DINGO_AKKA_TLS_CERTIFICATE, DINGO_AKKA_TLS_KEY)."
                        : $" {skipped} plain akka.tcp address(es) were not asked: this console speaks TLS only.") +
                    $" (this console is {self})");
            }
        }
        finally
        {
            await system.Terminate().ConfigureAwait(false);
            tls?.Dispose();
        }
    }

    /// <summary>
    /// The address the console's remoting binds: the configured one, unless that is a loopback address while every
    /// broker to contact is elsewhere. A broker answers over a connection it opens to the console's address (members
    /// use no passive connections, <see cref="AkkaDefaults"/>), and a loopback address would point it at itself: the
    /// console then binds the local address this host reaches the first such broker from (the kernel's route choice;
    /// no packet is sent). Brokers named by DNS name, or none routable, leave the configured address.
    /// </summary>
    public static string ReachableHostname(string configured, IReadOnlyList<Address> brokers)
    {
        if (!IsLoopback(configured) || brokers.Count == 0 || brokers.Any(b => b.Host is null || IsLoopback(b.Host))) return configured;
        foreach (var broker in brokers)
        {
            if (!IPAddress.TryParse(broker.Host, out var ip)) continue;
            try
            {
                using var probe = new Socket(ip.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
                probe.Connect(ip, broker.Port is > 0 and var port ? port : 9);
                if (probe.LocalEndPoint is IPEndPoint local && !IPAddress.IsLoopback(local.Address)
                    && !local.Address.Equals(IPAddress.Any) && !local.Address.Equals(IPAddress.IPv6Any))
                    return local.Address.ToString();
            }
            catch (SocketException)
            {
                // No route to this one: try the next.
            }
        }
        return configured;
    }

    private static bool IsLoopback(string host) =>
        string.Equals(host, "localhost", StringComparison.OrdinalIgnoreCase) || (IPAddress.TryParse(host, out var ip) && IPAddress.IsLoopback(ip));

    /// <summary>The exception at the bottom of <paramref name="ex"/>'s chain (the one that says what happened).</summary>
    internal static Exception Innermost(Exception ex)
    {
        while (ex.InnerException is not null) ex = ex.InnerException;
        return ex;
    }

    /// <summary>Remoting only (a client, not a cluster member), quiet, on a free port; TLS when the platform's remoting is.</summary>
    internal static Akka.Configuration.Config ConsoleConfig(string hostname, bool tls = false) => ConfigurationFactory.ParseString($$"""
        {{(tls ? AkkaTls.Hocon : "")}}
        akka.actor.provider = remote
        akka.remote.dot-netty.tcp.hostname = "{{hostname}}"
        akka.remote.dot-netty.tcp.port = 0
        akka.loglevel = WARNING
        akka.stdout-loglevel = WARNING
        akka.remote.log-remote-lifecycle-events = off
        akka.log-dead-letters = off
        akka.log-dead-letters-during-shutdown = off
        akka.coordinated-shutdown.run-by-clr-shutdown-hook = off
        akka.cluster.client.reconnect-timeout = off
        """);

    /// <summary>The answer as a table: who answered and who leads, then one row per member.</summary>
    public static void Write(ClusterView view, TextWriter output)
    {
        output.WriteLine($"answered by {HostPort(view.Broker)}; leader {(view.Leader is { } leader ? HostPort(leader) : "none")}");
        var rows = new List<string[]> { new[] { "MEMBER", "ROLES", "STATUS", "REACHABLE", "SHARDS", "ENTITIES" } };
        foreach (var m in view.Members)
        {
            rows.Add([HostPort(m.Address), string.Join(",", m.Roles), m.Status, m.Reachable ? "yes" : "NO",
                m.Shards?.ToString(CultureInfo.InvariantCulture) ?? "-", m.Entities?.ToString(CultureInfo.InvariantCulture) ?? "-"]);
        }
        var widths = Enumerable.Range(0, rows[0].Length).Select(i => rows.Max(r => r[i].Length)).ToArray();
        foreach (var row in rows)
            output.WriteLine(string.Join("  ", row.Select((cell, i) => i == row.Length - 1 ? cell : cell.PadRight(widths[i]))).TrimEnd());
        if (!view.HasShardStats) output.WriteLine("(shard counts unavailable: the sharding coordinator did not answer in time)");
    }

    /// <summary>host:port of akka.tcp://system@host:port.</summary>
    public static string HostPort(string address)
    {
        var at = address.LastIndexOf('@');
        return at < 0 ? address : address[(at + 1)..];
    }
}
