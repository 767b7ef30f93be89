using System.Diagnostics;

namespace Dingo;

/// <summary>What a tool run ended with.</summary>
public sealed record ProcessResult(int ExitCode, string StdOut, string StdErr);

/// <summary>
/// Runs a tool to its end, for every part that runs one (the process runtime's PostgreSQL tools, the kernel router's
/// nft and conntrack): no shell, standard input written then closed, both outputs read as it runs, a deadline after
/// which the tool and everything it started are killed.
/// </summary>
public static class ProcessRunner
{
    /// <param name="start">the tool, its arguments and environment; the streams are redirected here</param>
    /// <param name="stdin">written to its standard input, then closed (never logged: it may carry a password)</param>
    /// <param name="timeout">after this the tool's process tree is killed and a <see cref="TimeoutException"/> says so</param>
    /// <param name="background">at the lowest CPU priority (inherited by what it starts): work ahead of need</param>
    /// <param name="name">what errors call it (its file name when not given; never its arguments, which may be secret)</param>
    /// <exception cref="OperationCanceledException">the caller cancelled (the tool is killed first)</exception>
    public static async Task<ProcessResult> RunAsync(ProcessStartInfo start, string? stdin, TimeSpan timeout, CancellationToken ct, bool background = false, string? name = null)
    {
        start.UseShellExecute = false;
        start.RedirectStandardInput = true;
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        using var process = new Process { StartInfo = start };
        if (!process.Start()) throw new InvalidOperationException($"Could not start {start.FileName}.");
        if (background)
        {
            try { process.PriorityClass = ProcessPriorityClass.Idle; }
            catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception) { } // exited already, or not allowed: it runs as is
        }
        // Read from the start: a tool that fills a pipe nobody reads would never exit.
        var stdout = process.StandardOutput.ReadToEndAsync(CancellationToken.None);
        var stderr = process.StandardError.ReadToEndAsync(CancellationToken.None);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(ct);
        deadline.CancelAfter(timeout);
        try
        {
            if (stdin is not null)
            {
                try { await process.StandardInput.WriteAsync(stdin.AsMemory(), deadline.Token).ConfigureAwait(false); }
                catch (IOException) { } // it exited before reading: its exit code and stderr tell why
            }
            process.StandardInput.Close();
            await process.WaitForExitAsync(deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            try { ProcessTree.Kill(process); }
            catch (InvalidOperationException) { } // already exited
            ct.ThrowIfCancellationRequested();
            throw new TimeoutException($"{name ?? Path.GetFileName(start.FileName)} did not finish within {timeout.TotalSeconds:0.#} s");
        }
        return new ProcessResult(process.ExitCode, await stdout.ConfigureAwait(false), await stderr.ConfigureAwait(false));
    }
}
