namespace Dingo.Broker; public static class Program { public static int Main() => 0; }
