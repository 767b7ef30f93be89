using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Akka.Actor;
using Akka.Configuration;
using Akka.Event;
using Akka.Remote.Transport;
using Dingo.Config;
using Dingo.Membership;
using Google.Protobuf;
using Xunit.Abstractions;

namespace Dingo.Tests.Security;

/// <summary>
/// Dingo's Akka TLS transport (<see cref="TlsTransport"/>) on real sockets with certificates of a test CA: what a peer
/// sends at once after the handshake waits for Akka's reader instead of being dropped, messages arrive whole and in
/// order, and a failed outbound handshake refuses that association only, where Akka.NET's DotNetty transport shut the
/// whole actor system down.
/// </summary>
public sealed class TlsTransportTests(ITestOutputHelper output) : IDisposable
{
    private readonly TestCertificates _ca = new("platform-ca");
    private readonly TestCertificates _other = new("other-ca");
    private readonly List<ActorSystem> _systems = [];

    public void Dispose()
    {
        Task.WaitAll(_systems.Select(s => s.Terminate()).ToArray(), TimeSpan.FromSeconds(10));
        _ca.Dispose();
        _other.Dispose();
    }

    [Fact]
    [Trait("Tier", "Fast")]
    public async Task What_a_peer_sends_before_akka_reads_waits_for_the_reader_and_arrives_whole_and_in_order()
    {
        var server = Transport(_ca.IssuePem("server"));
        var client = Transport(_ca.IssuePem("client"));
        var (address, promise) = await server.Listen();
        var inbound = new Events<IAssociationEvent>();
        promise.SetResult(inbound);
        await client.Listen();

        var handle = await client.Associate(address);
        var clientEvents = new Events<IHandleEvent>();
        handle.ReadHandlerSource.SetResult(clientEvents);
        // Sent at once after the handshake, as Akka's own handshake is; the large one spans several writes and TLS records.
        var large = new byte[100_000];
        Random.Shared.NextBytes(large);
        var sent = new[] { ByteString.CopyFromUtf8("first"), ByteString.CopyFrom(large), ByteString.CopyFromUtf8("third") };
        foreach (var message in sent) Assert.True(handle.Write(message));

        var association = Assert.IsType<InboundAssociation>(await inbound.NextAsync());
        // Akka registers its reader after a thread-pool hop and an actor start; under load that took longer than the
        // peer's handshake, and DotNetty dropped what had arrived meanwhile.
        await Task.Delay(TimeSpan.FromSeconds(1));
        var serverEvents = new Events<IHandleEvent>();
        association.Association.ReadHandlerSource.SetResult(serverEvents);
        foreach (var message in sent)
            Assert.Equal(message, Assert.IsType<InboundPayload>(await serverEvents.NextAsync()).Payload);

        // Both ways, and a disassociation is heard on the other side.
        Assert.True(association.Association.Write(ByteString.CopyFromUtf8("back")));
        Assert.Equal("back", Assert.IsType<InboundPayload>(await clientEvents.NextAsync()).Payload.ToStringUtf8());
        handle.Disassociate("the test is done", NoLogger.Instance);
        Assert.IsType<Disassociated>(await serverEvents.NextAsync());
        Assert.IsType<Disassociated>(await clientEvents.NextAsync());
        Assert.False(handle.Write(ByteString.CopyFromUtf8("late")));
        await Task.WhenAll(client.Shutdown(), server.Shutdown());
    }

    [Theory]
    [Trait("Tier", "Fast")]
    [InlineData("closes-in-the-handshake")]
    [InlineData("answers-no-tls")]
    [InlineData("has-another-cas-certificate")]
    public async Task A_failed_outbound_handshake_refuses_that_association_and_the_system_goes_on(string peer)
    {
        var member = Member(_ca.IssuePem("member"));
        var good = Member(_ca.IssuePem("good"));
        good.ActorOf(Props.Create(() => new Echo()), "echo");
        var warnings = Channel.CreateUnbounded<string>();
        var listener = member.ActorOf(Props.Create(() => new WarningListener(warnings.Writer)));
        member.EventStream.Subscribe(listener, typeof(Warning));

        int port;
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        using var stop = new CancellationTokenSource();
        if (peer == "has-another-cas-certificate")
        {
            // It trusts our CA too: only our side's check can refuse it.
            port = Port(Member(_other.IssuePem("stranger", caFile: _other.BundleWith(_ca))));
        }
        else
        {
            socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            socket.Listen();
            port = ((IPEndPoint)socket.LocalEndPoint!).Port;
            _ = Task.Run(async () =>
            {
                while (!stop.IsCancellationRequested)
                {
                    using var accepted = await socket.AcceptAsync(stop.Token);
                    if (peer == "answers-no-tls") await accepted.SendAsync("HTTP/1.1 400 Bad Request\r\n\r\n"u8.ToArray(), SocketFlags.None);
                }
            });
        }

        member.ActorSelection($"akka.ssl.tcp://dingo@127.0.0.1:{port}/user/anyone").Tell("hello");
        var expected = peer == "has-another-cas-certificate" ? AkkaTls.RefusalPrefix : TlsTransport.HandshakeFailedPrefix;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        string warning;
        do warning = await warnings.Reader.ReadAsync(timeout.Token);
        while (!warning.StartsWith(expected, StringComparison.Ordinal));
        output.WriteLine(warning);

        // The same system still reaches a good peer afterwards: DotNetty's transport had begun a coordinated shutdown.
        var answer = await member.ActorSelection($"akka.ssl.tcp://dingo@127.0.0.1:{Port(good)}/user/echo").Ask<string>("ping", TimeSpan.FromSeconds(10));
        Assert.Equal("pong", answer);
        Assert.False(member.WhenTerminated.IsCompleted);
        await stop.CancelAsync();
    }

    [Fact]
    [Trait("Tier", "Fast")]
    public async Task A_message_larger_than_a_write_batch_arrives_whole_between_small_ones()
    {
        const string frames = "\nmaximum-frame-size = 1000000b";
        var server = Transport(_ca.IssuePem("server"), frames);
        var client = Transport(_ca.IssuePem("client"), frames);
        var (address, promise) = await server.Listen();
        var inbound = new Events<IAssociationEvent>();
        promise.SetResult(inbound);
        await client.Listen();
        var handle = await client.Associate(address);
        handle.ReadHandlerSource.SetResult(new Events<IHandleEvent>());
        var large = new byte[600_000];
        Random.Shared.NextBytes(large);
        var sent = new[] { ByteString.CopyFromUtf8("before"), ByteString.CopyFrom(large), ByteString.CopyFromUtf8("after") };
        foreach (var message in sent) Assert.True(handle.Write(message));

        var association = Assert.IsType<InboundAssociation>(await inbound.NextAsync());
        var serverEvents = new Events<IHandleEvent>();
        association.Association.ReadHandlerSource.SetResult(serverEvents);
        foreach (var message in sent)
            Assert.Equal(message, Assert.IsType<InboundPayload>(await serverEvents.NextAsync()).Payload);
        await Task.WhenAll(client.Shutdown(), server.Shutdown());
    }

    private TlsTransport Transport(AkkaTlsSettings settings, string extra = "")
    {
        var tls = AkkaTls.Load(settings)!;
        var system = ActorSystem.Create("dingo", BootstrapSetup.Create()
            .WithConfig(ConfigurationFactory.ParseString("akka.loglevel = WARNING\nakka.stdout-loglevel = WARNING")).And(tls.Setup()));
        _systems.Add(system);
        system.WhenTerminated.ContinueWith(_ => tls.Dispose(), TaskScheduler.Default);
        return new TlsTransport(system, ConfigurationFactory.ParseString("hostname = \"127.0.0.1\"\nport = 0\nconnection-timeout = 3s" + extra));
    }

    private ActorSystem Member(AkkaTlsSettings settings)
    {
        var tls = AkkaTls.Load(settings)!;
        var config = ConfigurationFactory.ParseString($$"""
            {{AkkaTls.Hocon}}
            {{AkkaDefaults.Remoting}}
            akka.actor.provider = remote
            akka.remote.dot-netty.tcp { hostname = "127.0.0.1", port = 0 }
            akka.loglevel = WARNING
            akka.stdout-loglevel = WARNING
            akka.coordinated-shutdown.run-by-clr-shutdown-hook = off
            """);
        var system = ActorSystem.Create("dingo", BootstrapSetup.Create().WithConfig(config).And(tls.Setup()));
        _systems.Add(system);
        system.WhenTerminated.ContinueWith(_ => tls.Dispose(), TaskScheduler.Default);
        return system;
    }

    private static int Port(ActorSystem system) => ((ExtendedActorSystem)system).Provider.DefaultAddress.Port!.Value;

    private sealed class Events<T> : IAssociationEventListener, IHandleEventListener where T : class
    {
        private readonly Channel<object> _events = Channel.CreateUnbounded<object>();

        public void Notify(IAssociationEvent ev) => _events.Writer.TryWrite(ev);

        public void Notify(IHandleEvent ev) => _events.Writer.TryWrite(ev);

        public async Task<T> NextAsync()
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            return (T)await _events.Reader.ReadAsync(timeout.Token);
        }
    }

    private sealed class Echo : ReceiveActor
    {
        public Echo() => Receive<string>(_ => Sender.Tell("pong"));
    }

    private sealed class WarningListener : ReceiveActor
    {
        /// <summary>Each warning from its message on (Akka's prefix of level, time, thread and source cut off).</summary>
        public WarningListener(ChannelWriter<string> warnings) => Receive<Warning>(w =>
        {
            var text = w.ToString();
            var at = text.IndexOf("Akka TLS: ", StringComparison.Ordinal);
            warnings.TryWrite(at >= 0 ? text[at..] : text);
        });
    }
}
