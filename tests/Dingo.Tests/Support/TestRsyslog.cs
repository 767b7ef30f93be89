using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Dingo.Tests.Support;

/// <summary>
/// A real rsyslogd (Debian's rsyslog, rsyslog-gnutls for TLS) in the foreground with a configuration of the test's own:
/// one TCP listener, plain or TLS (gtls, anonymous clients: the client checks the server, as a log service would), and
/// every message it receives written to a file as `PRI|APP-NAME|PROCID|MSGID|MSG`. Stopped by PID on dispose.
/// </summary>
public sealed class TestRsyslog : IAsyncDisposable
{
    public const string Binary = "/usr/sbin/rsyslogd";
    private readonly Process _process;
    private readonly List<string> _output;

    private TestRsyslog(Process process, string folder, int port, List<string> output)
    {
        _process = process;
        Folder = folder;
        Port = port;
        _output = output;
    }

    public string Folder { get; }
    public int Port { get; }
    public string Received => Path.Combine(Folder, "received.log");

    /// <param name="tls">the server's certificate and key, and the CA file rsyslog loads (null: plain TCP)</param>
    public static async Task<TestRsyslog> StartAsync((string Cert, string Key, string Ca)? tls = null)
    {
        Assert.True(File.Exists(Binary), $"{Binary} is missing (Debian packages rsyslog and rsyslog-gnutls; ./dingo test installs them)");
        var folder = Directory.CreateTempSubdirectory("dingo-rsyslog-").FullName;
        var port = FreePorts.One();
        var global = tls is { } t
            ? $"global(workDirectory=\"{folder}\" defaultNetstreamDriver=\"gtls\" defaultNetstreamDriverCAFile=\"{t.Ca}\" defaultNetstreamDriverCertFile=\"{t.Cert}\" defaultNetstreamDriverKeyFile=\"{t.Key}\")\n" +
              "module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")\n"
            : $"global(workDirectory=\"{folder}\")\nmodule(load=\"imtcp\")\n";
        var conf = global +
            $"input(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\n" +
            "template(name=\"fields\" type=\"string\" string=\"%PRI%|%APP-NAME%|%PROCID%|%MSGID%|%msg%\\n\")\n" +
            $"action(type=\"omfile\" file=\"{Path.Combine(folder, "received.log")}\" template=\"fields\" flushOnTXEnd=\"on\" asyncWriting=\"off\")\n";
        var confFile = Path.Combine(folder, "rsyslog.conf");
        await File.WriteAllTextAsync(confFile, conf);
        var output = new List<string>();
        var process = RunProcesses.Start(Binary, ["-n", "-f", confFile, "-i", Path.Combine(folder, "rsyslogd.pid")], folder,
            onOutput: line => { lock (output) output.Add(line); });
        var syslog = new TestRsyslog(process, folder, port, output);
        try
        {
            await Eventually.UntilAsync(() => Task.FromResult(Listening(port) || process.HasExited), TimeSpan.FromSeconds(15), () => $"rsyslogd listening on {port}: {syslog.Output()}");
            Assert.False(process.HasExited, $"rsyslogd exited: {syslog.Output()}");
            return syslog;
        }
        catch
        {
            await syslog.DisposeAsync();
            throw;
        }
    }

    private static bool Listening(int port)
    {
        try
        {
            using var probe = new TcpClient();
            probe.Connect(IPAddress.Loopback, port);
            return true;
        }
        catch (SocketException) { return false; }
    }

    public string Output() { lock (_output) return string.Join(" | ", _output.TakeLast(10)); }

    /// <summary>The messages received so far, split into their fields.</summary>
    public IReadOnlyList<(int Pri, string App, string ProcId, string MsgId, string Msg)> Messages()
    {
        if (!File.Exists(Received)) return [];
        using var stream = new FileStream(Received, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split('|', 5)).Where(p => p.Length == 5)
            .Select(p => (int.Parse(p[0], System.Globalization.CultureInfo.InvariantCulture), p[1], p[2], p[3], p[4])).ToList();
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill();
                await _process.WaitForExitAsync(new CancellationTokenSource(TimeSpan.FromSeconds(10)).Token);
            }
        }
        catch (InvalidOperationException) { }
        _process.Dispose();
        try { Directory.Delete(Folder, recursive: true); }
        catch (IOException) { }
    }
}
