using System.Runtime.InteropServices;

namespace Dingo.Cli;

/// <summary>
/// Ctrl-C (SIGINT) and SIGTERM for a command that runs until told to stop (`logs -f`, `watch`): they cancel its token, so
/// it lets go of what it holds (engine streams, etcd watches, the terminal's live display) and ends with 128 + the
/// signal's number, as a shell reports a command a signal ended: 130 for Ctrl-C, 143 for SIGTERM. The console leaves signal handling to each command (Program.Main): without this,
/// the runtime's default ending waited on a stream read that was still in flight (DockerCellTests, fresh186).
/// </summary>
internal sealed class Interrupt : IDisposable
{
    /// <summary>128 + the number of the signal that stopped the command (130 SIGINT, 143 SIGTERM).</summary>
    public int ExitCode { get; private set; }

    private readonly CancellationTokenSource _cts;
    private readonly PosixSignalRegistration _sigint;
    private readonly PosixSignalRegistration _sigterm;

    public Interrupt(CancellationToken ct)
    {
        _cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        _sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);
        _sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
    }

    /// <summary>How long a command may take to let go after the signal before the process ends anyway.</summary>
    private static readonly TimeSpan Grace = TimeSpan.FromSeconds(3);

    private void Stop(PosixSignalContext context)
    {
        context.Cancel = true; // this command ends itself, promptly
        if (Requested) return;
        Requested = true;
        ExitCode = 128 + (context.Signal == PosixSignal.SIGTERM ? 15 : 2);
        _cts.Cancel();
        // Ctrl-C must end the command whatever a read in flight does: under load, a Docker engine stream's read was seen
        // to outlive its cancellation (DockerCellTests, fresh188). Past the grace, the process ends at once, with the same code.
        _ = Task.Delay(Grace).ContinueWith(_ =>
        {
            Console.Error.WriteLine($"dingo: still stopping {Grace.TotalSeconds:0} s after the signal; ending now");
            Native.Exit(ExitCode);
        }, TaskScheduler.Default);
    }

    private static class Native
    {
        /// <summary>_exit(2): ends the process now, without the runtime's shutdown work that a stuck read may hold up.</summary>
        [DllImport("libc", EntryPoint = "_exit")]
        public static extern void Exit(int status);
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
