using Dingo.Cells;
using Dingo.Tests.Support;

namespace Dingo.Tests.Cells;

/// <summary>
/// The host's CPU pressure (Linux PSI) that work which can wait also waits behind (dingo.cell.saturated-cpu-pressure):
/// the file's line read as the kernel writes it, the host's own file, and NodeWork's quiet with it.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class CpuPressureTests
{
    [Theory]
    [InlineData("some avg10=97.51 avg60=40.03 avg300=12.00 total=44781416817", 97.51)]
    [InlineData("some avg10=0.00 avg60=0.00 avg300=0.00 total=0", 0.0)]
    [InlineData("full avg10=3.00 avg60=0.00 avg300=0.00 total=0", null)]   // "some" is the first line; "full" is not what counts
    [InlineData("some avg60=1.00 total=3", null)]
    [InlineData("some avg10=x avg60=1.00", null)]
    [InlineData("", null)]
    [InlineData(null, null)]
    public void The_first_line_gives_the_share_of_the_last_10_s_with_a_task_waiting(string? line, double? expected)
    {
        Assert.Equal(expected, CpuPressure.Parse(line));
    }

    [Fact]
    public void This_hosts_own_pressure_is_a_percentage_or_unknown()
    {
        var pressure = CpuPressure.Some10();
        if (File.Exists("/proc/pressure/cpu")) Assert.InRange(pressure!.Value, 0, 100);
        else Assert.Null(pressure);
    }

    [Fact]
    public void Work_that_can_wait_waits_while_the_host_is_saturated_and_not_once_it_is_not()
    {
        double? pressure = 80;
        var work = new NodeWork(() => pressure, saturatedPercent: 50);
        Assert.False(work.QuietFor(TimeSpan.Zero));          // no node work at all, but the host's tasks wait for a CPU
        Assert.False(work.ServingQuietFor(TimeSpan.Zero));
        Assert.Equal(80, work.LastPressure);
        pressure = 49.9;
        Assert.True(work.QuietFor(TimeSpan.Zero));
        Assert.True(work.ServingQuietFor(TimeSpan.Zero));
        pressure = null;                                        // a kernel without PSI: only the cell's own work counts
        Assert.True(work.QuietFor(TimeSpan.Zero));
        using (work.Begin())
        {
            pressure = 0;
            Assert.False(work.QuietFor(TimeSpan.Zero));        // and that still does
        }
    }

    [Fact]
    public void With_the_check_off_the_pressure_is_not_looked_at()
    {
        var looked = 0;
        var work = new NodeWork(() => { looked++; return 100; }, saturatedPercent: 0);
        Assert.True(work.QuietFor(TimeSpan.Zero));
        Assert.True(work.ServingQuietFor(TimeSpan.Zero));
        Assert.Equal(0, looked);
    }
}
