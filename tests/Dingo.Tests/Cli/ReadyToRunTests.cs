using System.Security.Cryptography;
using Dingo.Cli;
using Dingo.Tests.Support;

namespace Dingo.Tests.Cli;

/// <summary>`./dingo up` runs the ahead-of-time compiled broker and cell only while that build was made from the ordinary build's code.</summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class ReadyToRunTests : IDisposable
{
    private readonly string _bin = Directory.CreateTempSubdirectory("dingo-r2r-").FullName;
    private string Published => Path.Combine(_bin, ReadyToRun.Rid, "publish");

    public void Dispose() => Directory.Delete(_bin, recursive: true);

    private static void Put(string dir, string name, string text)
    {
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, name), text);
    }

    /// <summary>What the dingo script's publish_ready writes: `sha256sum Dingo.*.dll` of the ordinary build.</summary>
    private void Stamp() => File.WriteAllLines(Path.Combine(Published, ReadyToRun.StampFile),
        Directory.EnumerateFiles(_bin, "Dingo.*.dll").Order(StringComparer.Ordinal)
            .Select(f => $"{Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(f)))}  {Path.GetFileName(f)}"));

    [Fact]
    public void The_published_build_runs_only_while_the_ordinary_build_is_byte_for_byte_the_one_it_was_published_with()
    {
        var program = Path.Combine(_bin, "Dingo.Cell.dll");
        Put(_bin, "Dingo.Cell.dll", "cell v1");
        Put(_bin, "Dingo.Actors.dll", "actors v1");
        // Nothing published yet.
        Assert.Equal(program, ReadyToRun.Prefer(program));
        Assert.False(ReadyToRun.IsPublished(program));

        // Published, without its stamp (cut short): the ordinary build runs.
        Put(Published, "Dingo.Cell.dll", "cell v1, compiled");
        Assert.Equal(program, ReadyToRun.Prefer(program));
        Stamp();
        var chosen = ReadyToRun.Prefer(program);
        Assert.Equal(Path.Combine(Published, "Dingo.Cell.dll"), chosen);
        Assert.True(ReadyToRun.IsPublished(chosen));

        // The ordinary build rewritten with the same bytes (file times move): still current.
        Put(_bin, "Dingo.Actors.dll", "actors v1");
        File.SetLastWriteTimeUtc(Path.Combine(_bin, "Dingo.Actors.dll"), DateTime.UtcNow.AddMinutes(5));
        Assert.Equal(Path.Combine(Published, "Dingo.Cell.dll"), ReadyToRun.Prefer(program));

        // Newer code in a library alone, or a new library: the ordinary build runs until published again.
        Put(_bin, "Dingo.Actors.dll", "actors v2");
        Assert.Equal(program, ReadyToRun.Prefer(program));
        Stamp();
        Assert.Equal(Path.Combine(Published, "Dingo.Cell.dll"), ReadyToRun.Prefer(program));
        Put(_bin, "Dingo.Extra.dll", "extra");
        Assert.Equal(program, ReadyToRun.Prefer(program));
    }
}
