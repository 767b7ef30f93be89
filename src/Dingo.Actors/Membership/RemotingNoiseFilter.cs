using Akka.Event;

namespace Dingo.Membership;

/// <summary>
/// Drops Akka remoting's association lifecycle messages (an association failed, was gated, or disassociated), with
/// their stack traces, when they concern the operator console (<see cref="ClusterConsole.SystemName"/>). On a broker,
/// every console that asks and leaves would otherwise log a warning and an error that say nothing wrong (Akka.NET's
/// remoting shutdown races its own goodbye). On the console (<c>console: true</c>) it drops them whoever they concern,
/// a failed bind and failed TLS handshakes too (<see cref="TlsTransport"/>'s and Akka's own): a contact that is down would print its retries between the lines of the answer, and the
/// console ends with an error of its own that names the contacts it tried (or the address it could not bind).
/// Nothing else is dropped.
/// </summary>
public sealed class RemotingNoiseFilter : LogFilterBase
{
    private readonly bool _console;

    /// <param name="console">the filter of the console's own actor system (rather than a broker's)</param>
    public RemotingNoiseFilter(bool console) => _console = console;

    public override LogFilterType FilterType => LogFilterType.Content;

    public override LogFilterDecision ShouldKeepMessage(LogEvent content, string? expandedMessage = null)
    {
        var message = content.Message?.ToString() ?? "";
        var lifecycle = message == "Disassociated"
            || message.StartsWith("Association with remote system ", StringComparison.Ordinal)
            || message.StartsWith("Tried to associate with unreachable remote address ", StringComparison.Ordinal);
        if (_console)
        {
            var consoleOnly = message.StartsWith("Failed to bind to ", StringComparison.Ordinal)
                // DotNetty's transport racing its own shutdown as the console stops.
                || message.StartsWith("Unable to REMOVE channel ", StringComparison.Ordinal)
                // A TLS handshake a broker refused (or this console's check did): the console's own error says to look
                // at its certificate; the broker logs the refusal with the reason.
                || message.StartsWith("TLS handshake failed on channel ", StringComparison.Ordinal)
                || message.StartsWith("TLS exception on channel ", StringComparison.Ordinal)
                || message.StartsWith("Error caught channel ", StringComparison.Ordinal)
                || message.StartsWith(AkkaTls.RefusalPrefix, StringComparison.Ordinal)
                || message.StartsWith(TlsTransport.HandshakeFailedPrefix, StringComparison.Ordinal);
            return lifecycle || consoleOnly ? LogFilterDecision.Drop : LogFilterDecision.Keep;
        }
        if (!lifecycle) return LogFilterDecision.Keep;
        // The console's address appears in the message, or (URL-encoded) in the endpoint writer's path.
        return message.Contains(ClusterConsole.SystemName + "@", StringComparison.Ordinal)
            || (content.LogSource ?? "").Contains(ClusterConsole.SystemName + "%40", StringComparison.Ordinal)
            ? LogFilterDecision.Drop
            : LogFilterDecision.Keep;
    }

    /// <summary>The setup a broker's actor system takes (Akka.Hosting's AddSetup).</summary>
    public static LogFilterSetup ForBroker() => new([new RemotingNoiseFilter(console: false)]);

    /// <summary>The setup of the console's own actor system.</summary>
    public static LogFilterSetup ForConsole() => new([new RemotingNoiseFilter(console: true)]);
}
