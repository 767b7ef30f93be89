// Dingo runs on Linux: its cells drive PostgreSQL processes through /proc, setpriv and signals.
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]
// The costliest test classes start first (Support/LongestFirst.cs), so both runner threads finish together.
[assembly: Xunit.TestCollectionOrderer("Dingo.Tests.Support.LongestFirst", "Dingo.Tests")]
