using System.Runtime.CompilerServices;
using Dingo.Security;

namespace Dingo.Tests.Security;

/// <summary>
/// The test run's seal keys, in a key file of its own (mode 0600, outside every platform's data folder): the current
/// key, then <see cref="NextKey"/>, which the rotation test makes current for the CLI while this process (and every
/// platform in it) can still open what it seals. Configured once for the test process before any test runs; each
/// test platform's settings name the same file, so the cell and broker processes tests start read the same keys.
/// </summary>
internal static class TestSealKey
{
    public static string Folder { get; } = Path.Combine(Path.GetTempPath(), "dingo-tests", "seal-" + Guid.NewGuid().ToString("N")[..12]);
    public static string File { get; } = Path.Combine(Folder, "seal.key");
    public static string CurrentKey { get; } = SealKeyRing.NewKeyText();
    public static string NextKey { get; } = SealKeyRing.NewKeyText();
    public static string CurrentId => SealKeyRing.IdOf(Convert.FromBase64String(CurrentKey));
    public static string NextId => SealKeyRing.IdOf(Convert.FromBase64String(NextKey));

#pragma warning disable CA2255 // a test assembly: every record a test writes is sealed, so the keys must exist before the first test
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void Configure()
    {
        SecretFile.CreatePrivateFolder(Folder);
        using (var stream = new FileStream(File, SecretFile.CreateNewOptions()))
            stream.Write(System.Text.Encoding.UTF8.GetBytes(CurrentKey + "\n" + NextKey + "\n"));
        Sealing.Configure(new SealSettings { KeyFile = File });
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try { Directory.Delete(Folder, recursive: true); }
            catch (IOException) { }
        };
    }
}
