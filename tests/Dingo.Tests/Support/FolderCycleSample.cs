// Two folders that use each other only where reflection cannot see it (inside a method body, inside a lambda), so
// ArchitectureTests can prove FolderGraph finds such a circle. Nothing else uses these types.
namespace Dingo.Tests.FolderCycleSample.Left
{
    public static class Caller
    {
        public static int Call() => Dingo.Tests.FolderCycleSample.Right.Callee.Twice(1);
    }
}

namespace Dingo.Tests.FolderCycleSample.Right
{
    public static class Callee
    {
        public static int Twice(int x) => x * 2;

        public static Func<int> Later() => () => Dingo.Tests.FolderCycleSample.Left.Caller.Call();
    }
}
