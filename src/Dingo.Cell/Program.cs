namespace Dingo.Cell; public static class Program { public static int Main() => 0; }
