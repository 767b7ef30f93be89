namespace Dingo.Tests.Support;

/// <summary>Runs a program to its end and returns its exit code with stdout then stderr; killed (tree) past a deadline.</summary>
public static class ProgramRun
{
    /// <param name="unset">variables of the test process the program must not inherit</param>
    public static async Task<(int Code, string Output)> RunAsync(string file, IEnumerable<string> args, IReadOnlyDictionary<string, string>? env = null,
        IEnumerable<string>? unset = null, TimeSpan? deadline = null)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in env ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        foreach (var name in unset ?? []) psi.Environment.Remove(name);
        using var process = System.Diagnostics.Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        var limit = deadline ?? TimeSpan.FromSeconds(60);
        using var timeout = new CancellationTokenSource(limit);
        try { await process.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException)
        {
            ProcessTree.Kill(process);
            throw new TimeoutException($"{string.Join(' ', psi.ArgumentList)} did not finish within {limit.TotalSeconds:0} s");
        }
        return (process.ExitCode, await stdout + await stderr);
    }

    /// <summary>The built console (src/Dingo.Cli), as `./dingo` runs it.</summary>
    public static string ConsoleDll
    {
        get
        {
            var dll = Path.Combine(TestPlatform.RepoRoot(), "src", "Dingo.Cli", "bin", "Release", "net10.0", "dingo.dll");
            Assert.True(File.Exists(dll), $"{dll} is missing: build the solution (./dingo test does)");
            return dll;
        }
    }
}
