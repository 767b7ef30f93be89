// Dingo runs on Linux: its cells drive PostgreSQL processes through /proc, setpriv and signals.
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]
