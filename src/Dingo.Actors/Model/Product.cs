using System.Reflection;

namespace Dingo.Model;

/// <summary>
/// This build's version (semantic versioning 2.0): `Version` in Directory.Build.props, one number for every project.
/// `dingo --version` prints it; the catalog offers it as each plan's `maintenance_info.version`, so a platform sees an
/// instance provisioned by an older version as having an upgrade available.
/// </summary>
public static class Product
{
    public static string Version { get; } = Read();

    private static string Read()
    {
        // AssemblyVersion carries the props' Version as major.minor.patch.0; the informational version may carry a commit.
        var version = typeof(Product).Assembly.GetName().Version;
        return version is null ? "0.0.0" : $"{version.Major}.{version.Minor}.{Math.Max(0, version.Build)}";
    }

    /// <summary>The source commit the build came from, when the SDK recorded one (`+sha` of the informational version).</summary>
    public static string? Commit
    {
        get
        {
            var informational = typeof(Product).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion;
            var plus = informational?.IndexOf('+', StringComparison.Ordinal) ?? -1;
            return plus < 0 ? null : informational![(plus + 1)..];
        }
    }
}
