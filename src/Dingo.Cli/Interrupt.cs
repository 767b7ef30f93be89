using System.Runtime.InteropServices;

namespace Dingo.Cli;

/// <summary>
/// Ctrl-C (SIGINT) and SIGTERM for a command that runs until told to stop (`logs -f`, `watch`): they cancel its token, so
/// it lets go of what it holds (engine streams, etcd watches, the terminal's live display) and ends with 130, as a shell
/// reports a command ended by Ctrl-C. The console leaves signal handling to each command (Program.Main): without this,
/// the runtime's default ending waited on a stream read that was still in flight (DockerCellTests, fresh186).
/// </summary>
internal sealed class Interrupt : IDisposable
{
    public const int ExitCode = 130;

    private readonly CancellationTokenSource _cts;
    private readonly PosixSignalRegistration _sigint;
    private readonly PosixSignalRegistration _sigterm;

    public Interrupt(CancellationToken ct)
    {
        _cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        _sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);
        _sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
    }

    private void Stop(PosixSignalContext context)
    {
        context.Cancel = true; // this command ends itself, promptly
        Requested = true;
        _cts.Cancel();
    }

    public CancellationToken Token => _cts.Token;

    /// <summary>A signal asked the command to stop.</summary>
    public bool Requested { get; private set; }

    public void Dispose()
    {
        _sigint.Dispose();
        _sigterm.Dispose();
        _cts.Dispose();
    }
}
