using System.Diagnostics;
using System.Globalization;

namespace Dingo.Tests.Support;

/// <summary>
/// Scrapes a /metrics endpoint, checks the answer with Prometheus' own linter (`promtool check metrics`, Debian's
/// prometheus package) and reads series out of it.
/// </summary>
public static class MetricsText
{
    /// <summary>GETs the URL: 200 in Prometheus' text format, or the test fails naming what came back.</summary>
    public static async Task<string> ScrapeAsync(HttpClient http, string url)
    {
        using var answer = await http.GetAsync(url);
        var body = await answer.Content.ReadAsStringAsync();
        Assert.True(answer.IsSuccessStatusCode, $"{url}: {(int)answer.StatusCode} {body}");
        Assert.StartsWith("text/plain", answer.Content.Headers.ContentType?.MediaType ?? "", StringComparison.Ordinal);
        return body;
    }

    /// <summary>`promtool check metrics` on the text: no error and no lint problem, or the test fails with promtool's words.</summary>
    public static async Task CheckAsync(string text, string what)
    {
        var psi = new ProcessStartInfo("promtool", ["check", "metrics"])
        {
            UseShellExecute = false, RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true,
        };
        using var process = Process.Start(psi) ?? throw new InvalidOperationException("promtool did not start");
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var stdout = process.StandardOutput.ReadToEndAsync(timeout.Token);
        var stderr = process.StandardError.ReadToEndAsync(timeout.Token);
        await process.StandardInput.WriteAsync(text);
        process.StandardInput.Close();
        try { await process.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException)
        {
            Dingo.ProcessTree.Kill(process);
            throw new TimeoutException($"promtool check metrics on {what} did not finish within 30 s");
        }
        Assert.True(process.ExitCode == 0, $"promtool check metrics on {what} (exit {process.ExitCode}): {await stdout}{await stderr}");
    }

    /// <summary>The value of the first series named <paramref name="name"/> carrying every given label, or null.</summary>
    public static double? Value(string text, string name, params (string Label, string Value)[] labels)
    {
        foreach (var line in text.Split('\n'))
        {
            if (line.StartsWith('#') || !line.StartsWith(name, StringComparison.Ordinal)) continue;
            var rest = line[name.Length..];
            string labelPart;
            string valuePart;
            if (rest.StartsWith('{'))
            {
                var close = rest.LastIndexOf('}');
                if (close < 0) continue;
                labelPart = rest[1..close];
                valuePart = rest[(close + 1)..].Trim();
            }
            else if (rest.StartsWith(' '))
            {
                labelPart = "";
                valuePart = rest.Trim();
            }
            else continue; // another metric whose name starts with this one
            var padded = "," + labelPart + ",";
            if (!labels.All(l => padded.Contains($",{l.Label}=\"{l.Value}\",", StringComparison.Ordinal))) continue;
            var number = valuePart.Split(' ')[0];
            return double.Parse(number, NumberStyles.Float, CultureInfo.InvariantCulture);
        }
        return null;
    }
}
