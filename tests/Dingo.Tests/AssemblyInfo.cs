// Dingo runs on Linux: its cells drive PostgreSQL processes through /proc, setpriv and signals.
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]
// The costliest test classes start first (Support/LongestFirst.cs), so the runner threads finish together; xUnit's
// runner with one change, so that classes start strictly in that order (Support/LongestFirst.cs, StrictOrderFramework).
[assembly: Xunit.TestCollectionOrderer("Dingo.Tests.Support.LongestFirst", "Dingo.Tests")]
[assembly: Xunit.TestFramework("Dingo.Tests.Support.StrictOrderFramework", "Dingo.Tests")]
// Three test classes at once on the 2-core CI machine (xUnit's default is one per core): most of a class's time is
// spent waiting (for PostgreSQL to start, a lease to expire, a failover, a container), so a third keeps both cores
// busy. Measured on the whole suite: 13.6 min of tests with three, 15.5-16.7 with two (README, "Tests").
[assembly: Xunit.CollectionBehavior(MaxParallelThreads = 3)]
